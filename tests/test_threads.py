"""The default thread count: the cores this process may use less the cores other work keeps busy when the command
starts (rounded), split among this host's ranks, at least one. Every input is controlled here: the CPU counters,
the load average, the core count and the affinity mask."""
import argparse
import io

import pytest
import torch

from allspark import threads
from allspark.commands import options
from allspark.threads import busy_cores, default_threads, usable_cores


@pytest.mark.parametrize("cores, busy, ranks, expected", [
    (2, 0.1, 1, 2),  # an idle machine: every core
    (2, 1.0, 1, 1),  # one core held by another job
    (2, 2.6, 1, 1),  # more load than cores: still one thread
    (16, 4.4, 2, 6),  # two ranks share the 12 free cores
    (4, 0.0, 8, 1),  # more ranks than cores
    (4, 1.4, 1, 3),  # busy is rounded, not raised to the next core ...
    (4, 1.6, 1, 2),  # ... nor cut down
    (8, 0.0, 3, 2),  # the free cores split among the ranks, rounded down (2 * 3 <= 8)
    (8, 1.0, 0, 7),  # no rank count: one process
])
def test_default_threads_leaves_the_busy_cores(cores, busy, ranks, expected):
    assert default_threads(cores, busy, ranks) == expected


def _proc_stat(monkeypatch, *lines):
    """Make the module read `lines` as the first line of /proc/stat, one per call."""
    texts = iter(lines)

    def fake_open(path, *args, **kwargs):
        assert path == "/proc/stat"
        return io.StringIO(next(texts) + "\ncpu0 1 2 3 4\n")

    monkeypatch.setattr(threads, "open", fake_open, raising=False)


@pytest.fixture
def no_sleep(monkeypatch):
    """time.sleep recorded instead of waited."""
    slept = []
    monkeypatch.setattr(threads.time, "sleep", slept.append)
    return slept


def test_busy_cores_is_the_busy_share_of_all_cores_over_the_sample(monkeypatch, no_sleep):
    # user nice system idle iowait irq softirq steal: 30 of 100 jiffies busy between the two readings, iowait idle
    _proc_stat(monkeypatch, "cpu  100 0 50 800 50 0 0 0", "cpu  120 0 60 860 60 0 0 0")
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)  # not the counters' cores
    assert busy_cores(0.3) == pytest.approx(8 * 30 / 100)
    assert no_sleep == [0.3]


def test_busy_cores_is_zero_when_the_counters_did_not_move(monkeypatch, no_sleep):
    _proc_stat(monkeypatch, "cpu  100 0 50 800 50", "cpu  100 0 50 800 50")
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    assert busy_cores() == 0.0 and no_sleep == [threads.SAMPLE_SECONDS]


def test_busy_cores_falls_back_to_the_load_average_without_proc_stat(monkeypatch, no_sleep):
    def missing(path, *args, **kwargs):
        raise FileNotFoundError(path)

    monkeypatch.setattr(threads, "open", missing, raising=False)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.75, 9.0, 9.0))
    assert busy_cores() == 2.75 and no_sleep == []  # the 1-minute average, read at once
    monkeypatch.delattr(threads.os, "getloadavg")
    assert busy_cores() == 0.0


def test_usable_cores_is_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {2, 5, 7}, raising=False)
    assert usable_cores() == 3
    monkeypatch.delattr(threads.os, "sched_getaffinity")
    assert usable_cores() == 16
    monkeypatch.setattr(threads.os, "cpu_count", lambda: None)
    assert usable_cores() == 1


@pytest.fixture
def set_threads_seen(monkeypatch):
    """The thread counts `options.set_threads` gives torch (torch's own count is left alone)."""
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    return seen


@pytest.mark.parametrize("cores, busy, ranks, expected", [(4, 1.2, None, 3), (16, 4.4, "2", 6), (4, 0.3, None, 4)])
def test_set_threads_gives_torch_the_free_cores_at_start(monkeypatch, capsys, set_threads_seen, cores, busy, ranks,
                                                        expected):
    monkeypatch.setattr(options, "usable_cores", lambda: cores)
    monkeypatch.setattr(options, "busy_cores", lambda: busy)
    if ranks:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks)
    options.set_threads(argparse.Namespace(threads=None))
    assert set_threads_seen == [expected]
    note = capsys.readouterr().err
    if expected < cores:
        assert note.startswith(f"allspark: {expected} CPU thread(s) of {cores} cores ({busy:.1f} busy at start")
    else:
        assert note == ""  # every core: nothing to say


def test_set_threads_obeys_the_flag_then_omp_num_threads(monkeypatch, set_threads_seen):
    monkeypatch.setattr(options, "busy_cores", lambda: pytest.fail("measured although the count was given"))
    options.set_threads(argparse.Namespace(threads=5))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    options.set_threads(argparse.Namespace(threads=None))  # torch read OMP_NUM_THREADS itself
    assert set_threads_seen == [5]

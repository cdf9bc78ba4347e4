"""`allspark suggest` killed at random moments (SIGKILL, SIGINT, SIGTERM; part of them when the store holds a
random number of rows, the others after a random time, which may fall in the ranking or the writing of the
outputs) and started again with the same command ranks exactly as the same command left alone."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from inference_helpers import tiny_checkpoint, write_images

KILLS = 12
SIGNALS = (signal.SIGKILL, signal.SIGINT, signal.SIGTERM)


def _stored(out: Path) -> int:
    """Rows in the store now (all ranks' files; a row being written counts when its line is whole)."""
    if not (out / "scoring").is_dir():
        return 0
    return sum(max(0, path.read_bytes().count(b"\n") - 1) for path in (out / "scoring").glob("rows.*.csv"))


def _start(argv: list[str], out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "allspark", *argv, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_once(argv: list[str], out: Path, rng: np.random.Generator, at_rows: int | None, seconds: float
               ) -> tuple[int | None, int, float]:
    """Start the command and send it a random signal once the store holds `at_rows` rows, or without `at_rows`
    after a random share of `seconds`. Returns (its exit status, None when it ended first; the rows stored when the
    signal went; the seconds it ran)."""
    started = time.monotonic()
    proc = _start(argv, out)
    deadline = started + (rng.uniform(0.2, 1.0) * seconds if at_rows is None else 120)
    while proc.poll() is None and time.monotonic() < deadline:
        if at_rows is not None and _stored(out) >= at_rows:
            break
        time.sleep(0.005)
    stored = _stored(out)
    if proc.poll() is None:
        proc.send_signal(SIGNALS[int(rng.integers(len(SIGNALS)))])
        return proc.wait(timeout=120), stored, time.monotonic() - started
    return None, stored, time.monotonic() - started


@pytest.mark.slow
def test_suggest_killed_at_random_ranks_as_left_alone(tmp_path):
    weights = tiny_checkpoint(tmp_path / "run")
    images = write_images(tmp_path / "data" / "images", [(160, 160)] * 64)
    pool = tmp_path / "pool.txt"
    pool.write_text("".join(f"images/{path.name}\n" for path in images))
    argv = ["suggest", "--checkpoint", str(weights), "--count", "6", "--list", str(pool), "--root",
            str(tmp_path / "data"), "--batch-size", "2", "--threads", "1", "--device", "cpu"]
    started = time.monotonic()
    assert _start(argv, tmp_path / "whole").wait(timeout=300) == 0
    seconds, rng, stops, out = time.monotonic() - started, np.random.default_rng(0), [], tmp_path / "killed"
    while len(stops) < KILLS:  # the first half in the middle of the scoring, the others at any moment
        left = len(images) - _stored(out)
        at_rows = _stored(out) + int(rng.integers(1, left // 2 + 1)) if len(stops) < KILLS // 2 else None
        code, stored, took = _kill_once(argv, out, rng, at_rows, seconds)
        if code is None:  # it ended first: the next window is as long as such a run
            seconds = took
        else:
            stops.append((code, stored))
    assert _start(argv, out).wait(timeout=300) == 0
    assert sum(0 < stored < len(images) for _, stored in stops) >= KILLS // 2, stops
    for name in ("scores.csv", "suggested.txt"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name

"""The default CPU thread count: the cores that are free when a command starts, shared by the ranks of this host.

OpenMP threads wait for each other at every parallel region, so one thread more than there are free cores
makes every step wait for the core another job holds (40-140x slower measured on a busy 2-core machine)."""
from __future__ import annotations

import os
import time

SAMPLE_SECONDS = 0.2  # how long the CPU counters are watched to tell how many cores are busy


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and schedulers narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores from /proc/stat, or None off Linux."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(value) for value in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float:
    """How many cores other work keeps busy: measured over `seconds` on Linux, else the 1-minute load average."""
    first = _cpu_times()
    if first is None:
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    time.sleep(seconds)
    second = _cpu_times()
    busy, total = second[0] - first[0], second[1] - first[1]
    return (os.cpu_count() or 1) * busy / total if total > 0 else 0.0


def default_threads(cores: int, busy: float, local_ranks: int = 1) -> int:
    """Threads per process: the free cores (`cores` less the `busy` ones, rounded) split among the `local_ranks`
    processes of this host, at least one."""
    free = cores - min(round(busy), cores)
    return max(1, free // max(1, local_ranks))

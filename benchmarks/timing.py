"""Shared by the benchmark scripts: the checkout's paths and one median-of-N interleaved timer."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]  # the repository
SHARED = ROOT.parent / "shared"  # data and the releases' measuring harness, beside the checkout
REFERENCE = SHARED / "reference"
RESULTS = ROOT / "benchmarks" / "results"  # small summaries, committed
# fp32 and PyTorch's default optimiser kernel, as the releases: what a comparison with them, or with a result committed
# before `train.amp: auto` and the fused kernels became the defaults, needs to come back bit for bit
EXACT = {"amp": "off", "optimizer_kernel": "exact"}  # keys of a config's train section
EXACT_OVERRIDES = tuple(f"train.{key}={value}" for key, value in EXACT.items())
PRECISIONS = ("exact", "default")  # `--precision` of the studies: EXACT, or the package's defaults


def add_precision_option(parser) -> None:
    """`--precision` of a study whose committed results ran before `auto` and the fused kernels were the defaults."""
    parser.add_argument("--precision", choices=PRECISIONS, default="exact",
                        help="exact (the committed results): train.amp=off train.optimizer_kernel=exact; default: "
                             "the package's defaults (train.amp auto, the fused optimiser): give it its own --results")


def precision_overrides(precision: str) -> tuple[str, ...]:
    """The overrides of a study's `--precision`."""
    return EXACT_OVERRIDES if precision == "exact" else ()


def precision_suffix(precision: str) -> str:
    """What a study adds to its run folders' names under `--precision default`, so the two never share one."""
    return "" if precision == "exact" else "_default"
T = TypeVar("T")


def timed(fn: Callable[[], T], sync: Callable[[], object] | None = None) -> tuple[T, float]:
    """fn()'s value and the wall seconds of the call; `sync` (e.g. torch.cuda.synchronize) runs before and after,
    so queued GPU work counts."""
    if sync:
        sync()
    started = time.perf_counter()
    value = fn()
    if sync:
        sync()
    return value, time.perf_counter() - started


def seconds(fn: Callable[[], object], sync: Callable[[], object] | None = None) -> float:
    """Wall seconds of one fn() call (see `timed`)."""
    return timed(fn, sync)[1]


def interleave(cases: dict[str, Callable[[], object]], rounds: int, warmup: int = 0,
               sync: Callable[[], object] | None = None) -> dict[str, list[float]]:
    """Seconds of every call of each case after `warmup` rounds; each round calls every case once, in turn, so a
    shared machine slows them alike."""
    times = {name: [] for name in cases}
    for i in range(warmup + rounds):
        for name, fn in cases.items():
            took = seconds(fn, sync)
            if i >= warmup:
                times[name].append(took)
    return times


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 0,
                   sync: Callable[[], object] | None = None) -> float:
    """Median wall seconds of `repeats` calls of fn() after `warmup` calls."""
    return statistics.median(interleave({"": fn}, repeats, warmup, sync)[""])


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    """The median of each case's times, as `interleave` returns them."""
    return {name: statistics.median(values) for name, values in times.items()}

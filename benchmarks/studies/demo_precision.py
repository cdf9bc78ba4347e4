"""The demo's rows in the package's default precision against fp32 (EXACT), paired by seed: two results.json of
`demo_seeds` (one per `--precision`) side by side.

    python -m benchmarks.studies.demo_precision [--exact benchmarks/results/demo_seeds/data0]
                                                [--default benchmarks/results/demo_seeds/data0_default]

Prints per row and seed the final mIoU in each precision and the difference default - exact, then per row the
mean difference with its 95 % t-interval and the median wall seconds of a run in each precision where the
results record them.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.studies.demo_seeds import interval
from benchmarks.timing import RESULTS


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exact", default=str(RESULTS / "demo_seeds" / "data0"), help="results.json's folder, EXACT")
    p.add_argument("--default", default=str(RESULTS / "demo_seeds" / "data0_default"),
                   help="results.json's folder, the default precision")
    return p.parse_args()


def read(folder: str) -> dict:
    return json.loads((Path(folder) / "results.json").read_text())


def median_seconds(results: dict, run: str) -> str:
    """The median wall seconds of the row's runs, or '' where the results hold none."""
    values = list(results.get("seconds", {}).get(run, {}).values())
    return f"{statistics.median(values):.0f}" if values else ""


def rows(exact: dict, default: dict) -> list[str]:
    """The markdown table: per row and seed both precisions and their difference; per row the paired interval."""
    from allspark.demo import DEMO_RUNS

    lines = ["| row | seed | exact (fp32) | default | default - exact |", "|---|---|---|---|---|"]
    summary = ["| row | seeds | exact mean | default mean | default - exact: mean ± 95 % | median s, exact "
               "| median s, default |", "|---|---|---|---|---|---|---|"]
    for run in default["miou"]:
        seeds = [s for s in default["miou"][run] if s in exact["miou"].get(run, {})]
        pairs = [(exact["miou"][run][s], default["miou"][run][s]) for s in seeds]
        lines += [f"| {DEMO_RUNS[run][1]} | {s} | {e:.2f} | {d:.2f} | {d - e:+.2f} |" for s, (e, d) in zip(seeds, pairs)]
        mean, half = interval([d - e for e, d in pairs])
        summary.append(f"| {DEMO_RUNS[run][1]} | {len(seeds)} | {statistics.mean(e for e, _ in pairs):.2f} | "
                       f"{statistics.mean(d for _, d in pairs):.2f} | {mean:+.2f} ± {half:.2f} | "
                       f"{median_seconds(exact, run)} | {median_seconds(default, run)} |")
    return lines + [""] + summary


def main() -> None:
    args = parse_args()
    print("\n".join(rows(read(args.exact), read(args.default))))


if __name__ == "__main__":
    main()

"""Two-process runs end (issue 29's CI hang): `allspark pretrain` and `allspark train` under `--nproc 2` (torchrun,
gloo), run `--runs` times, `--jobs` at once so that the box is loaded, each given `--timeout` seconds. A run that
overruns is dumped with py-spy when it is installed, then killed. Before the trainers dropped their DDP wrapper
inside the process group's block, about one pretraining in three hung at exit here (distributed.distributed).

    OMP_NUM_THREADS=1 python -m benchmarks.studies.torchrun_exit --runs 24 --jobs 3

Prints one line per run and a count per command; exits 1 when a run hangs or fails."""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from allspark.data.splits import make_split
from allspark.data.synthetic import generate_synthetic

SMALL = ["model.crop_size=64", "data.workers=0", "--device", "cpu", "--nproc", "2", "--threads", "1",
         "--no-progress", "train.amp=bf16"]


def command(kind: str, data: Path, run_dir: Path) -> list[str]:
    if kind == "pretrain":
        return ["pretrain", "demo", f"run_dir={run_dir}", "--images", str(data / "images"), "--iters", "2",
                "--batch-size", "2", "--crop", "64", *SMALL]
    return ["train", "demo", f"run_dir={run_dir}", f"data.root={data}", "train.epochs=1", "train.batch_size=2",
            *SMALL]


def run_once(kind: str, data: Path, run_dir: Path, timeout: float) -> tuple[str, str]:
    """('ok' | 'exit N' | 'hang', what py-spy saw of a hung run)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "allspark", *command(kind, data, run_dir)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = process.communicate(timeout=timeout)
        return ("ok" if process.returncode == 0 else f"exit {process.returncode}"), err[-2000:]
    except subprocess.TimeoutExpired:
        return "hang", _dump_and_kill(process)


def _dump_and_kill(process: subprocess.Popen) -> str:
    """py-spy stacks of every python process whose command names this run's folder, then the run killed."""
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
    folder = process.args[process.args.index("demo") + 1]
    pids = [line.split()[0] for line in listing if folder in line and "python" in line]
    spy = shutil.which("py-spy")
    stacks = [subprocess.run([spy, "dump", "--pid", pid], capture_output=True, text=True).stdout
              for pid in pids] if spy else ["(py-spy not installed)"]
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    return "\n".join(stacks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=12, help="runs of each command")
    parser.add_argument("--jobs", type=int, default=3, help="runs at once")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a run counts as hung")
    parser.add_argument("--commands", nargs="+", default=["pretrain", "train"], choices=["pretrain", "train"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="torchrun_exit_"))
    data = work / "data"
    generate_synthetic(data, num_train=12, num_val=2, size=64, seed=0, num_classes=4)
    make_split(data / "train.txt", data / "splits", count=4, seed=0)
    jobs = [(kind, index) for kind in args.commands for index in range(args.runs)]
    counts: dict[tuple[str, str], int] = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        results = pool.map(lambda job: run_once(job[0], data, work / f"{job[0]}{job[1]}", args.timeout), jobs)
        for (kind, index), (outcome, detail) in zip(jobs, results):
            print(f"{kind} {index}: {outcome}", flush=True)
            if outcome != "ok":
                print(detail, flush=True)
            counts[kind, outcome] = counts.get((kind, outcome), 0) + 1
    for (kind, outcome), count in sorted(counts.items()):
        print(f"{kind}: {count} of {args.runs} {outcome}")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(outcome == "ok" for _, outcome in counts) else 1


if __name__ == "__main__":
    sys.exit(main())

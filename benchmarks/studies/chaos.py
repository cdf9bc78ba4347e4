"""Chaos (issue 32.9): a training run killed at random moments by SIGKILL, SIGINT or SIGTERM and restarted with
the same command each time ends with the weights, best weights, training state (EMA teacher, optimizer, RNG) and
metrics.jsonl (timing fields aside) of the same run left alone, bit for bit; the Semantic Memory is in the weights
(allspark.memory.*). Settings: `mit` (MiT-B0, AllSpark, the demo recipe's EMA teacher, memory on from epoch 1),
`v2` (DINOv2-small, random init, recipe unimatch_v2), `ddp` (mit under torchrun, two ranks, gloo) and `disk` (mit
in a tmpfs that fills once mid-run; root only). `allspark suggest` killed at random is tests/test_suggest_chaos.py.

    OMP_NUM_THREADS=1 python -m benchmarks.studies.chaos --kills 20 [--settings mit v2 ddp disk]

Prints a table per setting and exits 1 when any byte differs or a restart fails."""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from allspark.data.splits import make_split
from allspark.data.synthetic import generate_synthetic
from benchmarks.studies.chaos_compare import compare
from benchmarks.timing import ROOT

SIGNALS = (signal.SIGKILL, signal.SIGINT, signal.SIGTERM)
TINY = ["model.crop_size=64", "train.batch_size=2", "train.warmup_epochs=1", "train.log_every=1"]
MIT = ["demo_recipe", *TINY, "train.epochs=8", "train.checkpoint_every=2"]
V2 = ["demo", "model.encoder=dinov2_small", "recipe=unimatch_v2", *TINY, "model.crop_size=56", "train.epochs=4",
      "train.checkpoint_every=1"]
SETTINGS = {"mit": MIT, "v2": V2, "ddp": [*MIT, "--nproc", "2"], "disk": MIT}
IN_TRAINING = 0.6  # the share of kills sent after a start's first step (the others may hit the start-up)


@dataclass
class Outcome:
    """One setting's chaos: signals sent (by name), runs that stopped on their own, seconds, differences."""

    setting: str
    whole_s: float = 0.0
    chaos_s: float = 0.0
    kills: dict[str, int] = field(default_factory=dict)
    in_training: int = 0  # kills after the attempt had written a metrics line (the others hit the start-up)
    restarts: int = 0
    disk_full: int = 0
    failures: list[str] = field(default_factory=list)
    differences: dict[str, int] = field(default_factory=dict)
    differing: list[str] = field(default_factory=list)
    skipped: str = ""

    @property
    def exact(self) -> bool:
        return self.skipped != "" or (not self.failures and not any(self.differences.values()))


def _command(setting: str, data: Path, run: Path) -> list[str]:
    """The one command every attempt of `setting` runs, unchanged."""
    return [sys.executable, "-m", "allspark", "train", *SETTINGS[setting], f"data.root={data}", f"run_dir={run}",
            "--no-progress", "--threads", "1"]


def _start(command: list[str], log: Path) -> subprocess.Popen:
    """The command in a new session (so a signal reaches all its processes, as Ctrl-C or `kill` of a job does)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    with log.open("ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_default_sigint)


def _default_sigint() -> None:
    """SIGINT back to its default in the child: a job a shell starts in the background ignores it, and a process
    started so would ignore it too until the training's own handler is in place (Python keeps an ignored SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _reap(proc: subprocess.Popen) -> int:
    """Wait for the command and then for every process of its session (torchrun's ranks) to be gone."""
    code = proc.wait(timeout=600)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return code
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    return code


def _whole(command: list[str], run: Path, log: Path) -> tuple[float, float]:
    """Run the command left alone: (seconds to its first metrics line, seconds in all)."""
    started, ready = time.monotonic(), None
    proc = _start(command, log)
    while proc.poll() is None:
        if ready is None and (run / "metrics.jsonl").is_file():
            ready = time.monotonic() - started
        time.sleep(0.02)
    if _reap(proc) != 0:
        raise SystemExit(f"chaos: the uninterrupted run failed; see {log}")
    total = time.monotonic() - started
    return ready or total, total


def _attempt(command: list[str], metrics: Path, log: Path, delay: float, signum: int, in_training: bool
             ) -> tuple[bool, int]:
    """Start the command and send its session `signum` `delay` s after its first new metrics line (`in_training`),
    or else `delay` s after its start or at that line if sooner: (whether the signal went, False when the run ended
    first; the exit status)."""
    before, started = _last_line(metrics), time.monotonic()
    proc = _start(command, log)
    while proc.poll() is None and _last_line(metrics) == before and (in_training or
                                                                    time.monotonic() - started < delay):
        time.sleep(0.01)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=delay if in_training else 0)
    if proc.poll() is None:
        os.killpg(proc.pid, signum)
        return True, _reap(proc)
    return False, _reap(proc)


def _last_line(path: Path) -> bytes:
    """The last line of a metrics file (b"" when there is none)."""
    return path.read_bytes().rstrip(b"\n").rpartition(b"\n")[2] if path.is_file() else b""


def _chaos(command: list[str], metrics: Path, log: Path, outcome: Outcome, kills: int, rng: np.random.Generator,
           timing: tuple[float, float], on_exit=lambda output: False) -> None:
    """Start the command `kills` times, each sent a random signal after a random delay (in the start-up, or after
    the start's first step, spread so the kills cover the run), then once more to the end. A run that ends by itself
    with an error is a failure unless on_exit(its output) handles it (the disk that fills)."""
    ready, total = timing
    while sum(outcome.kills.values()) < kills and len(outcome.failures) < 3:
        signum, in_training = SIGNALS[int(rng.integers(len(SIGNALS)))], bool(rng.random() < IN_TRAINING)
        delay = float(rng.uniform(0, (total - ready) / kills if in_training else ready))
        before, logged = _last_line(metrics), log.stat().st_size
        went, code = _attempt(command, metrics, log, delay, signum, in_training)
        outcome.restarts += 1
        if went:
            outcome.kills[signum.name] = outcome.kills.get(signum.name, 0) + 1
            outcome.in_training += _last_line(metrics) != before
        if code == 0:
            break  # it finished first: later kills would not land in the training
        if not on_exit(log.read_bytes()[logged:].decode(errors="replace")) and not went:
            outcome.failures.append(f"start {outcome.restarts} ended by itself with status {code} (see {log})")
    code = _reap(_start(command, log))
    if code != 0:
        outcome.failures.append(f"the last start (let finish) ended with status {code} (see {log})")


@contextlib.contextmanager
def _place(setting: str, base: Path):
    """Where the run directory goes: `base`, or for `disk` a tmpfs mounted there for the block."""
    if setting != "disk":
        yield base
        return
    mount = base / "tmpfs"
    mount.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _fill(mount: Path, whole: Path) -> Path:
    """A ballast file that leaves free 3/4 of what the run left alone wrote into checkpoints/ (links counted once):
    a save part-way through the run finds the disk full."""
    need = sum({path.stat().st_ino: path.stat().st_size for path in (whole / "checkpoints").iterdir()}.values())
    free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
    ballast = mount / "ballast"
    with ballast.open("wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, free - need * 3 // 4)
    return ballast


def _empty_once(ballast: Path, outcome: Outcome):
    """on_exit for `disk`: the first disk-full stop frees the space (the ballast goes), as a user would; a signal
    may have come while that run was exiting."""
    def on_exit(output: str) -> bool:
        if not ballast.exists() or "no space left" not in output.lower():
            return False
        ballast.unlink()
        outcome.disk_full += 1
        return True
    return on_exit


def run_setting(setting: str, kills: int, seed: int, out: Path) -> Outcome:
    """The run left alone, the same command killed `kills` times and let finish, and their differences."""
    outcome = Outcome(setting)
    if setting == "disk" and os.geteuid() != 0:
        outcome.skipped = "skipped: mounting a tmpfs needs root"
        return outcome
    data, base = _data(out / "data"), out / setting
    base.mkdir(parents=True)
    with _place(setting, base) as place:
        run, log, whole = place / "run", base / "log.txt", base / "whole"
        command = _command(setting, data, run)
        timing = _whole(command, run, log)
        outcome.whole_s = timing[1]
        shutil.move(run, whole)  # the killed run uses the same run_dir, so config and metadata match too
        on_exit = _empty_once(_fill(place, whole), outcome) if setting == "disk" else (lambda output: False)
        started = time.monotonic()
        _chaos(command, run / "metrics.jsonl", log, outcome, kills, np.random.default_rng(seed), timing, on_exit)
        outcome.chaos_s = time.monotonic() - started
        outcome.differences, outcome.differing = compare(whole, run)
    return outcome


def _data(root: Path) -> Path:
    """The synthetic data of the trainer tests (12 training images, 4 of them labeled, 2 validation), made once."""
    if not (root / "splits").is_dir():
        generate_synthetic(root, num_train=12, num_val=2, size=64, seed=0, num_classes=4)
        make_split(root / "train.txt", root / "splits", count=4, seed=0)
    return root


HEADER = ("| setting | kills (by signal) | in training | starts | disk full | left alone s | chaos s | differing | "
          "failures |\n|---|---|---|---|---|---|---|---|---|")


def _row(o: Outcome) -> str:
    """The setting's line of the table (HEADER)."""
    if o.skipped:
        return f"| {o.setting} | {o.skipped} |"
    signals = ", ".join(f"{name} {count}" for name, count in sorted(o.kills.items()))
    diffs = ", ".join(f"{key} {value}" for key, value in o.differences.items())
    return (f"| {o.setting} | {sum(o.kills.values())} ({signals}) | {o.in_training} | {o.restarts} | {o.disk_full} | "
            f"{o.whole_s:.0f} | {o.chaos_s:.0f} | {diffs} | {'; '.join(o.failures) or 'none'} |")


def main(argv: list[str] | None = None) -> int:
    """Each setting in turn, its table line as it ends; 1 when any differs or fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="kept when given (default: a temporary folder)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="chaos."))
    print(HEADER)
    outcomes = []
    for setting in args.settings:
        outcomes.append(run_setting(setting, args.kills, args.seed, out))
        print(_row(outcomes[-1]), flush=True)
        for name in outcomes[-1].differing[:20]:
            print(f"  differs: {name}")
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)
    return 0 if all(o.exact for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())

"""`allspark train CONFIG [key=value ...]`: train or resume a run, on one process or relaunched under torchrun."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from allspark.commands.options import add_config_command, add_device_option, add_threads_option, set_threads
from allspark.config.loading import load_config
from allspark.engine.loop import train


def run(args: argparse.Namespace) -> int:
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return relaunch_with_torchrun(args.nproc, args.argv)
    cfg = load_config(args.config, args.overrides)
    set_threads(args)
    train(cfg, force_config=args.force_config, device=args.device, progress=not args.no_progress)
    return 0


def relaunch_with_torchrun(nproc: int, argv: list[str]) -> int:
    """`allspark train --nproc N ...` (`argv`, main's) -> `torchrun --nproc_per_node=N -m allspark train ...` (the
    same arguments)."""
    rest, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--nproc":
            skip = True
            continue
        if item.startswith("--nproc="):
            continue
        rest.append(item)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "allspark", *rest]
    child = subprocess.Popen(command)
    # Ctrl-C reaches torchrun with the rest of the process group; a SIGTERM sent to this process is handed on, so
    # that the ranks stop after their step and save (engine/stop.py) instead of this process dying alone
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
                signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))}
    try:
        return child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def register(sub) -> None:
    options = argparse.ArgumentParser(add_help=False)
    add_device_option(options)
    options.add_argument("--force-config", action="store_true",
                         help="continue a run directory whose saved config.yaml differs from this config")
    options.add_argument("--nproc", type=int, default=1, help="processes on this machine (relaunches under torchrun)")
    options.add_argument("--no-progress", action="store_true", help="no progress bar (or lines, off a terminal)")
    add_threads_option(options)
    add_config_command(sub, "train", options, run,
                       description="Train in cfg.run_dir; an existing run directory continues from its latest "
                                   "checkpoint. Multi-GPU: torchrun --nproc_per_node=N -m allspark train ...")

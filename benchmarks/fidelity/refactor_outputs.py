"""SHA-256 of every file the inference commands write for one tiny trained camvid-mini run, so a refactor can show
that `predict` (torch and onnx engines; whole, sliding and tiled), `export`, `eval` and `viz` write the same bytes.

The run is trained once into WORK (a few dozen iterations, 64 px crops, one thread) and reused by later calls, so
code before and after a change predicts from the very same weights. Every command runs as `python -m allspark` in
a fresh process with the interpreter's PYTHONPATH, i.e. the checkout that PYTHONPATH names.

    OMP_NUM_THREADS=1 PYTHONPATH=src python -m benchmarks.fidelity.refactor_outputs --work /tmp/r21 --out before.json
    OMP_NUM_THREADS=1 PYTHONPATH=src python -m benchmarks.fidelity.refactor_outputs --work /tmp/r21 --out after.json \
        --compare before.json        # exit status 1 and the differing files when any output changed
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.timing import EXACT_OVERRIDES, SHARED

CAMVID = SHARED / "data" / "camvid-mini"
TRAIN = ["model.pretrained=null", "model.crop_size=64", "train.epochs=6", "train.warmup_epochs=2",
         "train.batch_size=2", "train.log_every=4", "data.workers=0", *EXACT_OVERRIDES]
PREDICT_MODES = {"whole": [], "sliding": ["--mode", "sliding", "--window", "128"],
                 "tiled": ["--max-pixels", "200000", "--window", "256"]}


def allspark(*argv: str) -> None:
    """`python -m allspark ARGV` in a fresh process; stops the script when it fails."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "allspark", *argv], check=True, env=env)


def write_lists(data: Path, work: Path) -> dict[str, Path]:
    """Four labeled, eight unlabeled and two validation pairs of camvid-mini, as absolute-path lists."""
    lines = (data / "train.txt").read_text().splitlines()
    val = (data / "val.txt").read_text().splitlines()
    parts = {"labeled": lines[:4], "unlabeled": lines[4:12], "val": val[:2]}
    paths = {}
    for name, rows in parts.items():
        paths[name] = work / f"{name}.txt"
        paths[name].write_text("".join(" ".join(str(data / p) for p in row.split()) + "\n" for row in rows))
    return paths


def train_once(data: Path, work: Path) -> Path:
    """The run directory, trained on the first call only."""
    run = work / "run"
    if not (run / "checkpoints" / "best.safetensors").is_file():
        lists = write_lists(data, work)
        allspark("train", "camvid/allspark", f"run_dir={run}", f"data.root={data}",
                 f"data.labeled_list={lists['labeled']}", f"data.unlabeled_list={lists['unlabeled']}",
                 f"data.val_list={lists['val']}", *TRAIN, "--threads", "1")
    return run


def produce(data: Path, work: Path) -> Path:
    """Run every inference command into WORK/outputs (cleared first); returns that folder."""
    run = train_once(data, work)
    out = work / "outputs"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir()
    images = [str(data / line.split()[0]) for line in (work / "val.txt").read_text().splitlines()]
    export = out / "best.onnx"
    allspark("export", str(export), "--checkpoint", str(run))
    for engine, checkpoint in (("torch", str(run)), ("onnx", str(export))):
        for mode, options in PREDICT_MODES.items():
            allspark("predict", *images, "--checkpoint", checkpoint, "--engine", engine, "--out",
                     str(out / f"predict_{engine}_{mode}"), "--legend", "--threads", "1", "--amp", "off", *options)
    allspark("eval", "--checkpoint", str(run), "--out", str(out / "eval"), "--threads", "1", "--amp", "off")
    figures = {"features": [images[0]], "grouping": images, "memory": []}
    for plot, inputs in figures.items():
        allspark("viz", plot, *inputs, "--checkpoint", str(run), "--out", str(out / f"viz_{plot}.png"))
    allspark("viz", "curves", str(run), "--out", str(out / "viz_curves.png"))
    allspark("viz", "confusion", str(out / "eval"), "--out", str(out / "viz_confusion.png"))
    return out


def sha256_tree(root: Path) -> dict[str, str]:
    """{path relative to root: SHA-256} of every file under root."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=CAMVID, help="camvid-mini root")
    parser.add_argument("--work", type=Path, required=True, help="folder for the run and the outputs (reused)")
    parser.add_argument("--out", type=Path, required=True, help="JSON of the hashes to write")
    parser.add_argument("--compare", type=Path, help="a JSON written before; report every file that differs")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    hashes = sha256_tree(produce(args.data.resolve(), args.work.resolve()))
    hashes["run/checkpoints/best.safetensors"] = sha256_tree(args.work / "run" / "checkpoints")["best.safetensors"]
    args.out.write_text(json.dumps(hashes, indent=1) + "\n")
    print(f"{len(hashes)} files hashed into {args.out}")
    if args.compare:
        before = json.loads(args.compare.read_text())
        changed = sorted(name for name in before.keys() | hashes.keys() if before.get(name) != hashes.get(name))
        for name in changed:
            print(f"differs: {name}")
        print(f"{len(before)} files before, {len(hashes)} after, {len(changed)} differ")
        return 1 if changed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

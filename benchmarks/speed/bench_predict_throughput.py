"""Images per second of `allspark predict` on a folder, on the CPU: its two engines, PyTorch (fp32, and under
bf16 autocast) and the `allspark export` graph under onnxruntime, then the command itself end to end.

Per image: each image goes through every variant in turn (so a shared machine slows them alike); decoding and
writing files are left out; masks are compared with the fp32 PyTorch ones (share of equal pixels). End to
end: `allspark predict FOLDER --engine torch|onnx` in a fresh process each (start-up, model loading, reading
and writing files included), outputs compared. The checkpoint is copied to a temporary folder and exported
there (`allspark export`, default place), so a run directory is never written to. Without --checkpoint a
randomly initialised CamVid model (MiT-B0, 11 classes, AllSpark) is used: speed does not depend on the weights,
agreement is stricter with trained ones (random logits have small margins).

    .venv/bin/python -m benchmarks.speed.bench_predict_throughput --threads 1          # ../shared/data/camvid-mini val
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.timing import SHARED, timed

DEFAULT_IMAGES = SHARED / "data" / "camvid-mini" / "images" / "val"


def random_checkpoint(folder: Path) -> Path:
    """Weights of a randomly initialised CamVid AllSpark model (seed 0) in `folder`."""
    from allspark.config.loading import load_config
    from allspark.models import build_model
    from allspark.runs.weights_file import save_weights

    cfg = load_config("camvid/allspark", ["model.pretrained=null"])
    torch.manual_seed(0)
    path = folder / "random.safetensors"
    save_weights(path, build_model(cfg).state_dict(), cfg)
    return path


def run_command(argv: list[str]) -> float:
    """Seconds that `python -m allspark ARGV...` takes in a fresh process; its failure ends the benchmark."""
    command = [sys.executable, "-m", "allspark", *argv]
    done, took = timed(lambda: subprocess.run(command, capture_output=True, text=True))
    if done.returncode:
        sys.exit(f"bench_predict_throughput: allspark {argv[0]} failed:\n{done.stderr}")
    return took


def end_to_end(files: list[Path], weights: Path, folder: Path, threads: int | None) -> None:
    """`allspark predict FILES --mode whole` with each engine; prints images/s and the share of equal mask pixels."""
    seconds, masks = {}, {}
    for engine in ("torch", "onnx"):
        out = folder / engine
        seconds[engine] = run_command(["predict", *map(str, files), "--checkpoint", str(weights), "--out", str(out),
                                       "--mode", "whole", "--device", "cpu", "--engine", engine,
                                       *(["--threads", str(threads)] if threads else [])])
        masks[engine] = [np.asarray(Image.open(out / f"{path.stem}.png")) for path in files]
    equal = sum(int((a == b).sum()) for a, b in zip(masks["onnx"], masks["torch"]))
    pixels = sum(m.size for m in masks["torch"])
    print(f"\n`allspark predict --engine E` end to end, same images, a fresh process each (start-up, loading, "
          "reading and writing files included):")
    print("| engine | seconds | images/s | mask pixels equal to --engine torch |\n|---|---|---|---|")
    for engine in seconds:
        print(f"| {engine} | {seconds[engine]:.1f} | {len(files) / seconds[engine]:.1f} | "
              f"{equal / pixels if engine == 'onnx' else 1:.4%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of images")
    parser.add_argument("--checkpoint", help="run directory or .safetensors (default: random CamVid weights)")
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime CPU threads")
    args = parser.parse_args()
    files = sorted(p for p in args.images.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:args.limit]
    if not files:
        sys.exit(f"bench_predict_throughput: no images in {args.images} (pass --images FOLDER)")
    try:
        import onnxruntime
    except ImportError:
        sys.exit("bench_predict_throughput: onnxruntime is missing: pip install -e '.[export]'")
    if args.threads:
        torch.set_num_threads(args.threads)
    from allspark.predict.predictor import Predictor
    from allspark.runs.weights_file import resolve_weights

    tmp = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    if args.checkpoint:
        weights = Path(shutil.copy(resolve_weights(args.checkpoint), tmp / "weights.safetensors"))
    else:
        weights = random_checkpoint(tmp)
    export_seconds = run_command(["export", "--checkpoint", str(weights), "--no-check"])
    engines = {name: Predictor(weights, device="cpu", mode="whole", engine=name) for name in ("torch", "onnx")}

    def pytorch(batch, amp=False):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            return engines["torch"].predict_masks(list(batch))

    variants = {"PyTorch fp32": pytorch, "PyTorch bf16": lambda b: pytorch(b, amp=True),
                "onnxruntime fp32": lambda b: engines["onnx"].predict_masks(list(b))}
    images = [np.array(Image.open(path).convert("RGB")) for path in files]
    for fn in variants.values():  # warm-up
        fn(images[:1])
    seconds = {name: 0.0 for name in variants}
    equal = {name: 0 for name in variants}
    pixels = 0
    for image in images:
        masks = {}
        for name, fn in variants.items():
            masks[name], took = timed(lambda: fn([image])[0])
            seconds[name] += took
        pixels += masks["PyTorch fp32"].size
        for name, mask in masks.items():
            equal[name] += int((mask == masks["PyTorch fp32"]).sum())
    h, w = images[0].shape[:2]
    print(f"{len(images)} images from {args.images} (first {w}x{h}), batch 1, whole image, "
          f"{'random weights' if not args.checkpoint else args.checkpoint}, {torch.get_num_threads()} thread(s), "
          f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, load average {os.getloadavg()[0]:.1f}; "
          f"`allspark export` took {export_seconds:.1f} s")
    print("| variant | images/s | ms/image | pixels equal to PyTorch fp32 |\n|---|---|---|---|")
    for name in variants:
        print(f"| {name} | {len(images) / seconds[name]:.1f} | {seconds[name] / len(images) * 1e3:.1f} | "
              f"{equal[name] / pixels:.4%} |")
    end_to_end(files, weights, tmp, args.threads)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()

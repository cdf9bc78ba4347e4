"""Peak memory and time of `allspark predict` by image size: MiT-B0 (random weights, 11 classes,
trained crop 97) on the CPU, one process per run, so each peak RSS is that run's alone.

    .venv/bin/python -m benchmarks.speed.bench_predict_memory [--sizes 1000x750 2000x1500 4000x3000] [--threads 1]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from allspark.config.loading import config_from_dict
from allspark.models import build_model
from allspark.runs.weights_file import save_weights
from benchmarks.timing import timed


def write_checkpoint(folder: Path, crop: int) -> Path:
    """MiT-B0 AllSpark weights for CamVid's 11 classes; the weights do not change the memory."""
    cfg = config_from_dict({"method": "allspark", "model": {"encoder": "mit_b0", "num_classes": 11, "crop_size": crop},
                            "data": {"layout": "camvid"}})
    path = folder / "model.safetensors"
    save_weights(path, build_model(cfg).state_dict(), cfg)
    return path


def measure(checkpoint: Path, folder: Path, width: int, height: int, extra: list[str]) -> tuple[float, float, str]:
    """(peak RSS MB, seconds, the tiling line on stderr) of one `allspark predict` on a width x height JPEG."""
    image = folder / f"img_{width}x{height}.jpg"
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image, quality=90)
    command = [sys.executable, "-c", "import resource, sys; from allspark.cli import main\n"
               "try:\n    main(sys.argv[1:])\nfinally:\n"
               "    print(f'peak_kb {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)",
               "predict", str(image), "--checkpoint", str(checkpoint), "--out", str(folder / "out"), "--force", *extra]
    done, seconds = timed(lambda: subprocess.run(command, capture_output=True, text=True))
    lines = done.stderr.splitlines()
    if done.returncode != 0:
        raise SystemExit(f"predict on {image} failed ({done.returncode}): {lines[-3:]}")
    peak = next(int(line.split()[1]) for line in lines if line.startswith("peak_kb"))
    note = next((line.split(": ", 2)[-1] for line in lines if "sliding window" in line), "predicted whole")
    return peak / 1024, seconds, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["1000x750", "2000x1500", "4000x3000"], help="WIDTHxHEIGHT")
    parser.add_argument("--crop", type=int, default=97, help="the model's training crop")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("predict_args", nargs="*", help="more predict options after --, e.g. -- --tile off")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {args.threads} thread(s), peak RSS of the whole predict process")
    print(f"{'image':>10}  {'peak MB':>8}  {'seconds':>8}  path")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = write_checkpoint(folder, args.crop)
        for size in args.sizes:
            width, height = (int(v) for v in size.split("x"))
            peak, seconds, note = measure(checkpoint, folder, width, height,
                                          ["--threads", str(args.threads), *args.predict_args])
            print(f"{size:>10}  {peak:8.0f}  {seconds:8.1f}  {note}", flush=True)


if __name__ == "__main__":
    main()

"""Images per second of `allspark predict`'s work on a folder (decoded image -> class mask), on the CPU:
PyTorch fp32, PyTorch under bf16 autocast, and the exported ONNX model under onnxruntime.

Each image goes through every variant in turn (so a shared machine slows them alike); decoding and writing
files are left out. Masks are compared with the fp32 PyTorch ones (share of equal pixels). Without
--checkpoint a randomly initialised CamVid model (MiT-B0, 11 classes, AllSpark) is used: speed does not depend
on the weights, agreement is stricter with trained ones (random logits have small margins).

    .venv/bin/python benchmarks/bench_predict_throughput.py --threads 1          # ../shared/data/camvid-mini val
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid-mini" / "images" / "val"


def random_checkpoint(folder: Path) -> Path:
    """Weights of a randomly initialised CamVid AllSpark model (seed 0) in `folder`."""
    from allspark.config import load_config
    from allspark.models.weights import save_weights
    from allspark.models import build_model

    cfg = load_config("camvid/allspark", ["model.pretrained=null"])
    torch.manual_seed(0)
    path = folder / "random.safetensors"
    save_weights(path, build_model(cfg).state_dict(), cfg)
    return path


def onnx_masks(session, batch: torch.Tensor) -> np.ndarray:
    """Class masks (1, H, W) from the exported graph (input 'images', output 'logits')."""
    from allspark.export import INPUT_NAME, OUTPUT_NAME

    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})
    return logits.argmax(1)


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
    from allspark.data.transforms import normalize_image
    from allspark.models.weights import load_model
    from allspark.export import export_onnx
    from allspark.predict import Predictor

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or random_checkpoint(Path(tmp))
        predictor = Predictor(checkpoint, device="cpu", mode="whole")
        started = time.perf_counter()
        onnx_path = export_onnx(load_model(checkpoint)[0], predictor.cfg, Path(tmp) / "model.onnx")
        export_seconds = time.perf_counter() - started
        options = onnxruntime.SessionOptions()
        if args.threads:
            options.intra_op_num_threads = args.threads
        session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def pytorch(batch, amp=False):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            return predictor.predict_masks(list(batch))

    variants = {"PyTorch fp32": pytorch, "PyTorch bf16": lambda b: pytorch(b, amp=True),
                "onnxruntime fp32": lambda b: onnx_masks(session, torch.stack([normalize_image(i) for i in b]))}
    images = [np.array(Image.open(path).convert("RGB")) for path in files]
    for fn in variants.values():  # warm-up
        fn(images[:1])
    seconds = {name: 0.0 for name in variants}
    equal = {name: 0 for name in variants}
    pixels = 0
    for image in images:
        masks = {}
        for name, fn in variants.items():
            started = time.perf_counter()
            masks[name] = fn([image])[0]
            seconds[name] += time.perf_counter() - started
        pixels += masks["PyTorch fp32"].size
        for name, mask in masks.items():
            equal[name] += int((mask == masks["PyTorch fp32"]).sum())
    h, w = images[0].shape[:2]
    print(f"{len(images)} images from {args.images} (first {w}x{h}), batch 1, whole image, "
          f"{'random weights' if not args.checkpoint else args.checkpoint}, {torch.get_num_threads()} thread(s), "
          f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, load average {os.getloadavg()[0]:.1f}; "
          f"export took {export_seconds:.1f} s")
    print("| variant | images/s | ms/image | pixels equal to PyTorch fp32 |\n|---|---|---|---|")
    for name in variants:
        print(f"| {name} | {len(images) / seconds[name]:.1f} | {seconds[name] / len(images) * 1e3:.1f} | "
              f"{equal[name] / pixels:.4%} |")


if __name__ == "__main__":
    main()

"""Time the AllSpark bottleneck: memory update (vectorised vs sequential FIFO), training step with
memory (lean vs materialised attention maps) and inference. Prints medians as a Markdown table.

    python -m benchmarks.speed.bench_module [--device cuda] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch

from allspark.models.allspark import AllSparkBottleneck, enqueue, enqueue_sequential
from benchmarks.timing import median_seconds

# name: (channels C, token grid, classes K, heads H, images per branch B)
SETTINGS = {
    "pascal (C=512, 17x17, K=21)": (512, (17, 17), 21, 2, 2),
    "MiT-B0 crop 161 (C=256, 6x6, K=21)": (256, (6, 6), 21, 2, 2),
}


def median_ms(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of fn() in milliseconds, synchronising the GPU around each call."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    return median_seconds(fn, repeats, warmup, sync) * 1e3


def peak_mib(fn, device: torch.device) -> str:
    """Peak GPU memory allocated during one call of fn(), or '-' on the CPU."""
    if device.type != "cuda":
        return "-"
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return f"{(torch.cuda.max_memory_allocated(device) - base) / 2**20:.0f}"


def bench_setting(name, spec, device, repeats) -> list[tuple[str, str, str, str, str]]:
    channels, grid, classes, heads, batch = spec
    d = grid[0] * grid[1]
    rows = []

    queue = torch.randn(classes, channels, d, device=device)
    ptr = torch.zeros(classes, dtype=torch.long, device=device)
    feats = torch.randn(batch, channels, d, device=device)
    labels = torch.randint(0, classes, (batch, channels), device=device)
    fast = median_ms(lambda: enqueue(queue, ptr, feats, labels), device, repeats)
    slow = median_ms(lambda: enqueue_sequential(queue, ptr, feats, labels), device, repeats)
    rows.append((name, "memory update (enqueue)", f"{fast:.2f}", f"{slow:.2f}", f"{slow / fast:.1f}x"))

    torch.manual_seed(0)
    lean = AllSparkBottleneck(channels, classes, grid, heads=heads).to(device)
    plain = AllSparkBottleneck(channels, classes, grid, heads=heads, fast=False).to(device)
    plain.load_state_dict(lean.state_dict())
    x_l, x_u = torch.randn(2, batch, channels, *grid, device=device)
    logits = torch.randn(batch, classes, grid[0] * 32, grid[1] * 32, device=device)

    def train_step(model):
        model.train()
        model.zero_grad(set_to_none=True)
        y_l, y_u = model.forward_semi(x_l, x_u, logits, use_memory=True)
        (y_l.square().mean() + y_u.square().mean()).backward()

    def infer(model):
        model.eval()
        with torch.no_grad():
            model(torch.cat([x_l, x_u]))

    fast = median_ms(lambda: train_step(lean), device, repeats)
    slow = median_ms(lambda: train_step(plain), device, repeats)
    label = "train fwd+bwd, memory on"
    if device.type == "cuda":
        label += f" (peak MiB {peak_mib(lambda: train_step(lean), device)} vs {peak_mib(lambda: train_step(plain), device)})"
    rows.append((name, label, f"{fast:.2f}", f"{slow:.2f}", f"{slow / fast:.2f}x"))
    # without autograd both variants materialise the maps (see channel_attention): one figure
    rows.append((name, f"inference, {2 * batch} images", f"{median_ms(lambda: infer(lean), device, repeats):.2f}",
                 "same path", "-"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"median of {args.repeats}")
    print("| setting | what | ours / lean (ms) | reference (ms) | speed-up |")
    print("|---|---|---|---|---|")
    for name, spec in SETTINGS.items():
        for row in bench_setting(name, spec, device, args.repeats):
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()

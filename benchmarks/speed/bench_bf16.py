"""Each step under `train.amp=bf16` against its floor on this CPU and against the release's fp32 step.

Per step: its FLOPs (torch.utils.flop_counter, forward + backward), this machine's bf16 GEMM rate (a 2048x768 by
768x768 bf16 product, the fastest of 30 at the thread count), the floor (FLOPs / rate), our bf16 median, the
release's fp32 median, release / ours and ours / floor. The steps: AllSpark's (MiT-B0, memory on, batch 2 + 2) at each
`--crops`, and its batch-4 inference (`--family allspark`); the UniMatch V2 loop step (DINOv2-small + DPT, batch
2 + 2) and its batch-4 inference (`--family v2`). The two releases cannot share a process (their top-level packages
clash), so each family is its own run; within a run every case of a step runs once per round, in turn, so a
shared machine slows them alike (medians). `--fp32` adds our fp32 step as a column; `--profile` instead prints
where our bf16 steps' time goes (torch.profiler, operators by self time); `--attention` times the encoders'
attention paths in bf16 per shape (SDPA's flash kernel, its math path, ours).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.speed.bench_bf16 --threads 1 --family allspark
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.speed.bench_bf16 --threads 1 --family v2
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.speed.bench_bf16 --threads 1 --family v2 --attention
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.fidelity.release_harness import import_harness
from benchmarks.timing import REFERENCE, interleave, medians

GEMM = (2048, 768, 768)  # the shape of issue 28's measurement: a ViT-S/B linear layer's product at batch 2-4


def gemm_rate(repeats: int = 30) -> float:
    """FLOP/s of a bf16 (2048 x 768) @ (768 x 768) product on this CPU at the current thread count: the fastest of
    `repeats` calls, as a shared machine only ever slows a call down (the floor is a bound, not an estimate)."""
    m, k, n = GEMM
    a, b = torch.randn(m, k, dtype=torch.bfloat16), torch.randn(k, n, dtype=torch.bfloat16)
    return 2 * m * k * n / min(interleave({"": lambda: a @ b}, repeats, warmup=3)[""])


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of fn (matrix products and convolutions, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def allspark_cases(harness, args, crop: int) -> dict[str, dict[str, Callable]]:
    """{step: {side: callable}}: AllSpark's training step (memory on) and its batch-4 inference at `crop`."""
    from allspark import load_official
    from benchmarks.speed.bench_side_by_side import Ours, Release, inference, our_config, random_batches

    setting = argparse.Namespace(arch="b0", crop=crop, classes=args.classes, batch=2, lr=0.001, lr_multi=10.0,
                                 device="cpu")
    batches = random_batches(setting, torch.Generator().manual_seed(0))
    release = Release(harness, setting, "allspark")
    state = release.model.state_dict()
    sides = {"release fp32": lambda: release.step(batches)}
    variants = [("ours bf16", "bf16", False)] + [("ours fp32", "off", False)] * args.fp32
    for name, amp, compiled in variants + [("ours bf16 compiled", "bf16", True)] * args.compiled:
        ours = Ours(setting, "allspark", state, amp, compiled)
        sides[name] = lambda o=ours: o.step(batches)
    frozen = harness.build_official_model("b0", num_classes=args.classes, crop=crop, seed=0, warmup_epoch=0,
                                          decoder="allspark")
    frozen.decoder.set_SMem_status(epoch=0, isVal=True)
    model = load_official(frozen.state_dict(), our_config(setting, "allspark"))
    images = torch.randn(4, 3, crop, crop, generator=torch.Generator().manual_seed(1))
    return {f"AllSpark step, MiT-B0, crop {crop}, batch 2 + 2, memory on": sides,
            f"AllSpark inference, MiT-B0, crop {crop}, batch 4": {"release fp32": inference(frozen, images),
                                                                  "ours bf16": inference(model, images, "bf16")}}


def v2_cases(v2, args, crop: int) -> dict[str, dict[str, Callable]]:
    """{step: {side: callable}}: the UniMatch V2 loop step (DINOv2-small + DPT) and batch-4 inference at `crop`."""
    import allspark
    from benchmarks.speed.bench_v2_side_by_side import inference, loop_steps

    setting = argparse.Namespace(size="small", batch=2)
    steps = {"release fp32": loop_steps(v2, setting, crop, "off")[("UniMatch V2 loop step", "release")],
             "ours bf16": loop_steps(v2, setting, crop, "bf16")[("UniMatch V2 loop step", "ours")]}
    if args.fp32:
        steps["ours fp32"] = loop_steps(v2, setting, crop, "off")[("UniMatch V2 loop step", "ours")]
    torch.manual_seed(0)
    release = v2.build_model("small", args.classes)
    ours = allspark.load_official(release.state_dict(), {
        "method": "sup", "model": {"encoder": "dinov2_small", "head": "dpt", "ablation": "none",
                                   "num_classes": args.classes, "crop_size": 518}})
    images = torch.randn(4, 3, crop, crop, generator=torch.Generator().manual_seed(1))
    return {f"UniMatch V2 loop step, DINOv2-S + DPT, crop {crop}, batch 2 + 2": steps,
            f"UniMatch V2 inference, DINOv2-S + DPT, crop {crop}, batch 4": {
                "release fp32": inference(release, images, False), "ours bf16": inference(ours, images, True)}}


# (B, H, queries, keys, head dim) of the encoders' attention: DINOv2-S at crop 224, batch 4 and 2; MiT-B0's four
# stages at crop 161, batch 4 (keys reduced by the stage's sequence reduction)
ATTENTION_SHAPES = [(4, 6, 257, 257, 64), (2, 6, 257, 257, 64), (4, 1, 1681, 25, 32), (4, 2, 441, 25, 32),
                    (4, 5, 121, 25, 32), (4, 8, 36, 36, 32)]


def attention_rows(args) -> None:
    """Forward + backward and forward alone, bf16, per shape: SDPA's flash kernel, SDPA's math path, and ours
    (encoders/attention.py: explicit products, fp32 softmax); medians of interleaved rounds (ms)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from allspark.encoders.attention import attention
    paths = {"flash": lambda q, k, v: _sdpa(F, sdpa_kernel, SDPBackend.FLASH_ATTENTION, q, k, v),
             "math": lambda q, k, v: _sdpa(F, sdpa_kernel, SDPBackend.MATH, q, k, v),
             "ours": lambda q, k, v: attention(torch.nn.Module(), q, k, v, None)[0]}
    print("| B, H, queries, keys, d | " + " | ".join(f"{p} fwd+bwd | {p} fwd" for p in paths) + " |")
    print("|---|" + "---|---|" * len(paths))
    for b, h, n, m, d in ATTENTION_SHAPES:
        q, k, v = (torch.randn(b, h, rows, d, dtype=torch.bfloat16, requires_grad=True) for rows in (n, m, m))
        cases = {}
        for name, path in paths.items():
            cases[(name, "train")] = lambda path=path: path(q, k, v).sum().backward()
            cases[(name, "infer")] = lambda path=path: _no_grad(path, q, k, v)
        times = medians(interleave(cases, args.rounds * 4, args.warmup + 1))
        cells = " | ".join(f"{times[(p, 'train')] * 1e3:.2f} | {times[(p, 'infer')] * 1e3:.2f}" for p in paths)
        print(f"| {b}, {h}, {n}, {m}, {d} | {cells} |", flush=True)


def _sdpa(F, kernel, backend, q, k, v):
    with kernel(backend):
        return F.scaled_dot_product_attention(q, k, v)


def _no_grad(path, *tensors):
    with torch.no_grad():
        path(*tensors)


def measure(step: str, sides: dict[str, Callable], rate: float, args) -> str:
    """One table row: FLOPs of our bf16 side, the floor, each side's median, the two ratios."""
    sides["ours bf16"]()  # first call outside the count: lazy set-up (optimizer state, memory) is not the step
    flops = count_flops(sides["ours bf16"])
    times = medians(interleave(sides, args.rounds, args.warmup))
    ours, release, floor = times["ours bf16"], times["release fp32"], flops / rate
    extra = "".join(f" {times[name] * 1e3:.0f} |" if name in times else " |" for name in columns(args))
    return (f"| {step} | {flops / 1e9:.1f} | {floor * 1e3:.0f} | {ours * 1e3:.0f} | {release * 1e3:.0f} |{extra} "
            f"{release / ours:.2f}x | {ours / floor:.2f}x |")


def columns(args) -> list[str]:
    """The optional columns: our fp32 step, our compiled bf16 step (after its compilation, in the warm-up)."""
    return ["ours fp32"] * args.fp32 + ["ours bf16 compiled"] * args.compiled


def profile(sides: dict[str, Callable], rows: int) -> None:
    """Two warm-up and two profiled calls of our bf16 side; operators by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    step = sides["ours bf16"]
    step(), step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step(), step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", default=REFERENCE, help="the shared/reference folder")
    p.add_argument("--family", required=True, choices=["allspark", "v2"])
    p.add_argument("--crops", nargs="+", type=int, default=None,
                   help="allspark: not multiples of 32 (the release's memory size; default 161 225); v2: multiples "
                        "of 14 (default 224)")
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--fp32", action="store_true", help="our fp32 step as a column too")
    p.add_argument("--compiled", action="store_true",
                   help="allspark: our bf16 step under train.compile=true as a column too (compiles for minutes "
                        "unless inductor's cache, TORCHINDUCTOR_CACHE_DIR, is warm)")
    p.add_argument("--attention", action="store_true", help="time the attention paths per shape instead")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS", help="profile our bf16 steps instead")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="input's size at dim=1 does not match num_features")
    if args.attention:
        print(f"{torch.get_num_threads()} thread(s), torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}")
        attention_rows(args)
        return 0
    allspark = args.family == "allspark"
    crops = args.crops or ([161, 225] if allspark else [224])
    harness = import_harness(args.reference, "official" if allspark else "unimatch_v2", "bench_bf16")
    if not allspark:
        harness.load_release()
    rate = gemm_rate()
    print(f"{torch.get_num_threads()} thread(s), torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; bf16 GEMM {'x'.join(map(str, GEMM))}: {rate / 1e12:.3f} "
          f"TFLOP/s; medians of {args.rounds} interleaved rounds; load average {os.getloadavg()[0]:.1f} at the start")
    extra = "".join(f" {c} ms |" for c in columns(args))
    print(f"| step | GFLOP | bf16 floor ms | ours bf16 ms | release fp32 ms |{extra} release / ours | ours / floor |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(columns(args)), flush=True)
    for crop in crops:
        cases = allspark_cases(harness, args, crop) if allspark else v2_cases(harness, args, crop)
        for step, sides in cases.items():
            if args.profile:
                print(step)
                profile(sides, args.profile)
            else:
                print(measure(step, sides, rate, args), flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())

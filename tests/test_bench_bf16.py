"""Issue 28's measuring kit: bench_bf16's FLOP count and GEMM rate, bench_train's UniMatch V2 loop setting, and
benchmarks/gpu_rows.sh refusing in one line where no CUDA device is present."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.speed import bench_bf16, bench_train

ROOT = Path(__file__).resolve().parents[1]


def test_flops_of_a_product_and_a_positive_gemm_rate():
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    assert bench_bf16.count_flops(lambda: a @ b) == 2 * 64 * 32 * 16
    assert bench_bf16.gemm_rate(repeats=2) > 1e9


def test_bench_train_builds_the_v2_loop_with_two_boxed_strong_views():
    args = argparse.Namespace(encoder="dinov2_small", crop=42, classes=3, batch=2, amp="off", compile=False,
                              device="cpu")
    trainer, batch_l, batch_u, use_memory = bench_train.build("unimatch_v2 loop", args)
    assert trainer.cfg.recipe.views == 2 and trainer.ema is not None and not use_memory
    assert {"strong", "strong2", "box", "box2"} <= set(batch_u) and batch_u["box"].any()
    assert set(trainer.step(batch_l, batch_u, use_memory)) >= {"loss", "loss_u", "mask_ratio"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: gpu_rows.sh would measure")
def test_gpu_rows_without_cuda_says_so_in_one_line():
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_rows.sh")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "no CUDA device" in done.stderr

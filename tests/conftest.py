"""Fixtures shared by the test modules, and the closing line that says when ../shared is absent."""
from pathlib import Path

import pytest
import torch

from inference_helpers import run_cli, tiny_checkpoint

SHARED = Path(__file__).resolve().parents[2] / "shared"  # reference releases and data, beside the checkout


def pytest_terminal_summary(terminalreporter):
    """One closing line when part of ../shared is absent: the tests that need it skipped (-rs lists them), so a
    green run has then not checked fidelity to the releases nor the CamVid runs."""
    absent = [name for name in ("reference/harness", "data/camvid-mini") if not (SHARED / name).is_dir()]
    if absent:
        terminalreporter.write_line(f"shared: {', '.join(absent)} absent under {SHARED}; the tests that need them "
                                    "were skipped, not passed")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Every test on one torch thread, and commands run in-process take one as well (OMP_NUM_THREADS): tiny models
    run faster so, the test machine's cores are shared, and no busy-machine note lands in a captured stderr."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A tiny randomly initialised AllSpark checkpoint (see inference_helpers.tiny_checkpoint)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """(weights, export): another tiny checkpoint and `allspark export`'s graph at its default place beside it.
    One export for the session: tracing takes 20-60 s. Skipped without the optional `export` extra."""
    for module in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(module)
    from allspark.predict.backends import export_path

    weights = tiny_checkpoint(tmp_path_factory.mktemp("export"))
    # exit status 0 also means the built-in check (onnxruntime vs PyTorch at two sizes) passed
    assert run_cli(["export", "--checkpoint", str(weights)]) == 0
    return weights, export_path(weights)

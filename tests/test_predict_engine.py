"""`allspark predict --engine`: which engine runs, the stale-export guard, and onnxruntime's masks against PyTorch's."""
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from allspark.errors import EngineError
from allspark.predict import backends
from allspark.predict.backends import export_path, load_engine
from allspark.predict.predictor import Predictor
from allspark.runs.weights_file import read_weights, save_weights
from inference_helpers import PALETTE, run_cli, write_images

pytestmark = pytest.mark.slow  # the `exported` fixture traces the model once


def changed_copy(weights, folder):
    """The weights with one tensor changed, at the same file name in `folder`, and the old export copied beside."""
    state, cfg = read_weights(weights)
    name = next(iter(state))
    state[name] = state[name] + 1
    folder.mkdir()
    save_weights(folder / weights.name, state, cfg)
    shutil.copy(export_path(weights), export_path(folder / weights.name))
    return folder / weights.name


def test_auto_picks_the_matching_export_and_it_follows_a_copied_run(exported, tmp_path):
    weights, graph = exported
    assert Predictor(weights, device="cpu").engine == "onnx"
    assert Predictor(weights, device="cpu", engine="torch").engine == "torch"
    copied = tmp_path / "copy"
    copied.mkdir()
    for path in (weights, graph):  # new mtimes, same content: still a match
        shutil.copy(path, copied / path.name)
    predictor = Predictor(copied / weights.name, device="cpu")
    assert predictor.engine == "onnx" and str(copied / graph.name) in predictor.engine_note


def test_auto_ignores_a_stale_export_and_onnx_refuses_it(exported, tmp_path, capsys):
    stale = changed_copy(exported[0], tmp_path / "stale")
    predictor = Predictor(stale, device="cpu")
    assert predictor.engine == "torch" and "not exported from the current" in predictor.engine_note
    (image,) = write_images(tmp_path / "in", [(40, 40)])
    argv = ["predict", "--checkpoint", str(stale), str(image), "--out", str(tmp_path / "out"), "--engine", "onnx"]
    assert run_cli(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(export_path(stale)) in err[0] and "allspark export --force" in err[0]


def test_without_export_auto_runs_torch_and_onnx_is_an_error(checkpoint, tmp_path, capsys):
    predictor = Predictor(checkpoint, device="cpu")
    assert predictor.engine == "torch" and f"no ONNX export at {export_path(checkpoint)}" in predictor.engine_note
    (image,) = write_images(tmp_path / "in", [(40, 40)])
    argv = ["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path / "out"), "--engine", "onnx"]
    assert run_cli(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"allspark predict: error: no ONNX export at {export_path(checkpoint)}; "
                   f"`allspark export --checkpoint {checkpoint}` writes it"]
    assert not (tmp_path / "out").exists()


def test_without_onnxruntime_auto_runs_torch_and_onnx_names_it(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    weights, graph = exported
    assert Predictor(weights, device="cpu").engine == "torch"
    with pytest.raises(EngineError, match=f"{graph}: onnxruntime is not installed"):
        Predictor(weights, device="cpu", engine="onnx")


def test_onnx_runs_on_the_cpu_only(exported, monkeypatch):
    weights, graph = exported
    with pytest.raises(EngineError, match="CPU only; got device cuda"):
        load_engine(weights, "onnx", device="cuda")
    # on a CUDA machine, auto (engine and device) runs PyTorch on the GPU; --engine onnx runs on the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backends, "load_model", lambda path, device: (None, read_weights(path)[1]))
    chosen = load_engine(weights, "auto", device="auto")
    assert (chosen.name, chosen.device.type) == ("torch", "cuda")
    chosen = load_engine(weights, "onnx", device="auto")
    assert (chosen.name, chosen.device.type) == ("onnx", "cpu")


def test_export_file_as_checkpoint_carries_its_labels(exported, tmp_path):
    weights, graph = exported
    moved = tmp_path / "model.onnx"
    shutil.copy(graph, moved)
    predictor = Predictor(moved)
    assert predictor.engine == "onnx" and predictor.class_names == ["c0", "c1", "c2"]
    np.testing.assert_array_equal(predictor.palette, PALETTE)
    assert predictor.cfg.model.num_classes == 3
    with pytest.raises(EngineError, match="PyTorch needs the .safetensors weights"):
        Predictor(moved, engine="torch")


@pytest.mark.parametrize("options", [dict(mode="whole"), dict(mode="sliding", window=48, flip=True, scales=(0.75, 1.0)),
                                     dict(mode="whole", window=64, max_pixels=3000)])
def test_onnx_masks_equal_torch_masks(exported, options):
    """Both engines under every predictor path (whole, sliding + TTA, tiled): probabilities within float
    tolerance, and the same class wherever PyTorch's top two differ by more than that tolerance."""
    weights, _ = exported
    # the graph is fp32: PyTorch in fp32 too (amp off), so the two differ by float tolerance only
    engines = {name: Predictor(weights, device="cpu", engine=name, amp="off", **options) for name in ("torch", "onnx")}
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(64, 64), (64, 64), (70, 90)]]
    for batch in (images[:2], images[2:]):
        probs = {name: predictor.predict_probs_batch(batch) for name, predictor in engines.items()}
        torch.testing.assert_close(probs["onnx"], probs["torch"], rtol=0, atol=1e-4)
        masks = {name: np.stack(predictor.predict_masks(batch)) for name, predictor in engines.items()}
        top2 = probs["torch"].topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1] > 2e-4).numpy()
        assert clear.mean() > 0.9
        np.testing.assert_array_equal(masks["onnx"][clear], masks["torch"][clear])


def test_cli_says_which_engine_ran_and_writes_its_masks(exported, tmp_path, capsys):
    weights, graph = exported
    (image,) = write_images(tmp_path / "in", [(48, 56)])
    for engine in ("auto", "torch"):
        out = tmp_path / engine
        assert run_cli(["predict", "--checkpoint", str(weights), str(image), "--out", str(out), "--device", "cpu",
                        "--engine", engine]) == 0
        expected = Predictor(weights, device="cpu", engine="torch" if engine == "torch" else "onnx").predict(
            np.asarray(Image.open(image)))
        np.testing.assert_array_equal(np.asarray(Image.open(out / "img0.png")), expected)
    err = capsys.readouterr().err
    assert f"allspark predict: engine: onnxruntime, {graph}" in err
    assert "allspark predict: engine: PyTorch on cpu (engine torch asked for)" in err

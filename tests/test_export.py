"""`allspark export --format onnx`: dynamic H/W, onnxruntime logits equal PyTorch's."""
import json

import numpy as np
import onnx
import pytest
import torch

from allspark.data.normalize import normalize_image
from allspark.models.weights import load_model
from allspark.predict.backends import SOURCE_KEY, file_sha256
from allspark.predict.export import export_size
from inference_helpers import PALETTE, run_cli

pytestmark = pytest.mark.slow  # the torch.export-based exporter traces the whole model (~20 s on a laptop CPU)


@torch.no_grad()
def test_onnxruntime_equals_pytorch_at_two_sizes(exported):
    import onnxruntime

    checkpoint, out = exported
    model, _ = load_model(checkpoint)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for h, w in [(64, 64), (96, 80)]:
        images = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h))
        (logits,) = session.run(["logits"], {"images": images.numpy()})
        expected = model(images).numpy()
        assert logits.shape == expected.shape == (1, 3, h, w)
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


def test_graph_has_dynamic_size_and_metadata(exported):
    checkpoint, out = exported
    graph = onnx.load(str(out))
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[:2]] == [1, 3]
    assert all(d.dim_param and not d.dim_value for d in dims[2:])
    metadata = {p.key: json.loads(p.value) for p in graph.metadata_props}
    assert metadata["class_names"] == ["c0", "c1", "c2"]
    assert metadata["palette"] == PALETTE.tolist()
    assert metadata["allspark_config"]["model"]["num_classes"] == 3
    assert metadata[SOURCE_KEY] == file_sha256(checkpoint)


def test_metadata_normalisation_reproduces_the_training_input(exported):
    """An ONNX user normalising with the metadata's mean/std feeds exactly what the model was trained on."""
    _, out = exported
    metadata = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
    pixels = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    mean, std = np.array(metadata["mean"]), np.array(metadata["std"])
    by_metadata = ((pixels / 255 - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(by_metadata, normalize_image(pixels).numpy(), rtol=0, atol=1e-5)


def test_refuses_to_overwrite_without_force(exported, capsys):
    checkpoint, out = exported
    before = out.read_bytes()
    assert run_cli(["export", "--checkpoint", str(checkpoint), str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_the_free_space_estimate_covers_the_file(exported):
    checkpoint, out = exported
    size, estimate = out.stat().st_size, export_size(load_model(checkpoint)[0])
    assert size <= estimate < 2 * size + 4 * 2**20

"""The new encoder families downstream, on tiny registry entries: a short run with AllSpark under UniMatch V2's
loop and a frozen encoder, its weights loaded, predicted per image, and the ONNX graph equal to PyTorch."""
import numpy as np
import pytest
import torch

from allspark.config.loading import load_config
from allspark.data.splits import make_split
from allspark.data.synthetic import generate_synthetic
from allspark.engine.loop import train
from allspark.models.weights import load_model
from allspark.predict.export import export_onnx, max_onnx_difference
from allspark.predict.predictor import Predictor
from encoder_helpers import tiny_encoders


@pytest.fixture(autouse=True)
def registered():
    with tiny_encoders():
        yield


@pytest.mark.parametrize("encoder,crop", [("dinov2_tiny", 56), ("dinov3_convnext_test", 64)])
def test_short_run_then_load_and_predict(tmp_path, encoder, crop):
    root = generate_synthetic(tmp_path / "data", num_train=8, num_val=2, size=64, seed=0, num_classes=4)
    make_split(root / "train.txt", root / "splits", count=4, seed=0)
    cfg = load_config("demo", ["method=allspark", "recipe=unimatch_v2", f"data.root={root}",
                               f"run_dir={tmp_path / 'run'}", f"model.encoder={encoder}", f"model.crop_size={crop}",
                               "model.freeze_encoder=true", "train.batch_size=2", "train.max_iters=2",
                               "train.eval_every=2", "train.log_every=1"])
    result = train(cfg, progress=False)
    assert result["iteration"] == 2
    model, saved = load_model(tmp_path / "run")
    assert saved.model.encoder == encoder and saved.model.freeze_encoder
    masks = Predictor(tmp_path / "run").predict_masks([np.zeros((50, 70, 3), np.uint8)] * 2)
    assert len(masks) == 2 and masks[0].shape == (50, 70) and np.array_equal(masks[0], masks[1])


@pytest.mark.slow
@pytest.mark.parametrize("encoder,head,ablation,crop", [
    ("dinov2_tiny", "dpt", "full", 56),  # the release's position resize, exported for any size
    ("dinov2_reg_tiny", "segformer", "none", 56),
    ("dinov3_vit_tiny", "dpt", "none", 64),
    ("dinov3_convnext_test", "segformer", "full", 64),
])
def test_onnx_graph_of_every_family_equals_pytorch(tmp_path, encoder, head, ablation, crop):
    from allspark.config.loading import config_from_dict
    from allspark.models.segmenter import AllSparkSegmenter
    cfg = config_from_dict({"method": "sup" if ablation == "none" else "allspark",
                            "model": {"encoder": encoder, "head": head, "ablation": ablation, "num_classes": 3,
                                      "crop_size": crop}})
    torch.manual_seed(0)
    model = AllSparkSegmenter(cfg.model).eval()
    path = export_onnx(model, cfg, tmp_path / "model.onnx")
    # the crop, another size of whole patches, and sizes a ViT resizes to whole patches
    assert max_onnx_difference(model, path, [(crop, crop), (crop, 2 * crop), (50, 75), (97, 61)]) < 1e-4

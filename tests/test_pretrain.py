"""`allspark pretrain` (issue 29): masked image modelling lowers its loss, every family's encoder file loads into
`train` through model.pretrained, distillation lowers the feature loss with its teacher frozen, and a stopped or
crashed run resumes to the very weights of an uninterrupted one."""
from __future__ import annotations

import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from allspark.engine.loop import train
from allspark.errors import TrainingInterrupted
from allspark.models import build_model
from allspark.pretrain.loop import pretrain
from allspark.pretrain.masking import block_masks, mask_unit
from allspark.pretrain.pretrainer import Pretrainer
from allspark.pretrain.teacher import teacher_map
from allspark.runs.folder import RunFolder
from allspark.runs.weights_file import save_weights
from pretrain_helpers import FAMILY_ENCODERS, options, pretrain_cfg, registered, root  # noqa: F401 (fixtures)



def test_block_masks_hide_the_ratio_of_whole_blocks():
    masks = block_masks(3, 64, 32, 0.5, torch.Generator().manual_seed(0))
    assert masks.shape == (3, 64, 64) and masks.float().mean().item() == 0.5
    blocks = masks.view(3, 2, 32, 2, 32)
    assert torch.equal(blocks.all(dim=(2, 4)), blocks.any(dim=(2, 4)))  # each block all masked or all seen
    assert mask_unit(14) == 28 and mask_unit(16) == 32 and mask_unit(32) == 32


def _fixed_batch(root, unit: int) -> torch.Tensor:
    """4 augmented crops of whole mask blocks (<= 64 pixels)."""
    from allspark.pretrain.images import image_paths, pretrain_loader
    return next(iter(pretrain_loader(image_paths(root / "images"), 64 // unit * unit, 4, 0, 0)))["image"]


@pytest.mark.parametrize("encoder", ["mit_b0", "dinov2_tiny"])
def test_masked_image_modelling_lowers_the_reconstruction_loss(root, tmp_path, encoder):
    trainer = Pretrainer(pretrain_cfg(tmp_path, encoder), options(root, iters=30, lr=2e-3, warmup=0.0))
    images = _fixed_batch(root, trainer.unit)
    masks = block_masks(len(images), images.shape[-1], trainer.unit, 0.6, torch.Generator().manual_seed(1))

    def held_out_loss() -> float:
        trainer.model.eval()
        with torch.no_grad():
            return trainer.model(images, masks).item()

    before = held_out_loss()
    for _ in range(30):
        trainer.step({"image": images})
    assert held_out_loss() < 0.8 * before


def test_distillation_lowers_the_feature_loss_and_never_moves_the_teacher(root, tmp_path):
    torch.manual_seed(3)
    teacher_cfg = pretrain_cfg(tmp_path / "teacher", "dinov2_tiny")
    source = build_model(teacher_cfg).encoder
    save_weights(tmp_path / "teacher.safetensors", {f"encoder.{k}": v for k, v in source.state_dict().items()},
                 teacher_cfg)
    cfg = pretrain_cfg(tmp_path / "student", "dinov3_convnext_test")
    trainer = Pretrainer(cfg, options(root, iters=30, lr=2e-3, warmup=0.0, teacher=str(tmp_path / "teacher.safetensors"),
                                      teacher_encoder="dinov2_tiny"))
    frozen = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    assert all(torch.equal(frozen[k], v) for k, v in source.state_dict().items())  # the file's weights
    images = _fixed_batch(root, trainer.unit)
    target = teacher_map(trainer.teacher, images)

    def feature_loss() -> float:
        with torch.no_grad():
            return trainer.model(images, target).item()

    before = feature_loss()
    for _ in range(30):
        trainer.step({"image": images})
    assert feature_loss() < 0.8 * before
    assert not trainer.teacher.training and not any(p.requires_grad for p in trainer.teacher.parameters())
    assert all(torch.equal(frozen[k], v) for k, v in trainer.teacher.state_dict().items())


@pytest.mark.parametrize("encoder", FAMILY_ENCODERS)
def test_the_encoder_file_loads_through_model_pretrained(root, tmp_path, encoder):
    result = pretrain(pretrain_cfg(tmp_path / "pre", encoder), options(root / "images", iters=2), progress=False)
    saved = load_file(str(result["encoder"]))
    assert result["encoder"] == RunFolder(tmp_path / "pre").weights("encoder")
    for source in (tmp_path / "pre", result["encoder"]):  # the run folder, or the file itself
        model = build_model(pretrain_cfg(tmp_path / "seg", encoder, f"model.pretrained={source}", "method=sup"))
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    random = build_model(pretrain_cfg(tmp_path / "seg", encoder, "method=sup")).state_dict()
    assert any(not torch.equal(random[k], v) for k, v in saved.items())


def test_train_starts_from_a_pretrain_run(root, tmp_path):
    pretrain(pretrain_cfg(tmp_path / "pre"), options(root / "images", iters=2), progress=False)
    cfg = pretrain_cfg(tmp_path / "seg", "mit_b0", f"data.root={root}", "method=sup", "train.max_iters=1",
                       f"model.pretrained={tmp_path / 'pre'}", "train.batch_size=2")
    assert train(cfg, progress=False)["iteration"] == 1
    # a training run's folder gives its best checkpoint's encoder
    best = load_file(str(RunFolder(tmp_path / "seg").weights("best")))
    model = build_model(pretrain_cfg(tmp_path / "x", "mit_b0", f"model.pretrained={tmp_path / 'seg'}"))
    assert all(torch.equal(v, best[f"encoder.{k}"]) for k, v in model.encoder.state_dict().items())


def _run(root, run_dir, monkeypatch=None, stop_after=None, how="crash"):
    """Pretrain 6 steps (checkpoints every 2); with `stop_after`, a kill (an exception) or a SIGTERM after that step."""
    if stop_after is not None:
        original = Pretrainer.step

        def step(self, batch):
            record = original(self, batch)
            if self.iteration == stop_after:
                if how == "crash":
                    raise RuntimeError("killed")
                os.kill(os.getpid(), signal.SIGTERM)
            return record
        monkeypatch.setattr(Pretrainer, "step", step)
    try:
        return pretrain(pretrain_cfg(run_dir, "mit_b0", "train.checkpoint_every=2"), options(root / "images", iters=6),
                        progress=False)
    finally:
        monkeypatch and monkeypatch.undo()


@pytest.mark.parametrize("how,stop_after", [("crash", 5), ("signal", 3)])
def test_resume_after_a_stop_is_exact(root, tmp_path, monkeypatch, how, stop_after):
    whole = load_file(str(_run(root, tmp_path / "whole")["encoder"]))
    with pytest.raises(RuntimeError if how == "crash" else TrainingInterrupted):
        _run(root, tmp_path / "cut", monkeypatch, stop_after, how)
    assert not RunFolder(tmp_path / "cut").weights("encoder").exists()
    resumed = load_file(str(_run(root, tmp_path / "cut")["encoder"]))
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)

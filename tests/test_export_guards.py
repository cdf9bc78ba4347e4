"""`allspark export` without the slow tracing: the exporter's torchvision notes are silenced and a disk too full for
the file stops the command before the export starts (the exports themselves: test_export.py, slow)."""
import logging
from collections import namedtuple

import pytest
import torch

from allspark.config.loading import config_from_dict
from allspark.predict import export as export_module
from allspark.predict.export import REGISTRATION_LOGGER, export_onnx
from inference_helpers import run_cli

registration = pytest.importorskip("torch.onnx._internal.exporter._registration")


class Stop(Exception):
    """Raised by the stand-in exporter once it has logged what the real one logs."""


@pytest.fixture
def notes():
    """The records the exporter's registration logger lets through to its handlers."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(REGISTRATION_LOGGER)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_the_exporters_torchvision_notes_are_silenced_and_others_kept(notes, monkeypatch):
    if registration.importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: the exporter has no note to silence")
    registration._get_overload("torchvision::nms")  # what the exporter does for each torchvision operator
    assert [r.getMessage() for r in notes] == ["torchvision is not installed. Skipping torchvision::nms"]
    notes.clear()

    def exporter(*args, **kwargs):
        for name in ("nms", "roi_align", "roi_pool", "deform_conv2d"):
            registration._get_overload(f"torchvision::{name}")
        registration.logger.warning("another note")
        raise Stop

    monkeypatch.setattr(torch.onnx, "export", exporter)
    with pytest.raises(Stop):
        export_onnx(torch.nn.Identity(), config_from_dict({"model": {"crop_size": 32}}), "unused.onnx")
    assert [r.getMessage() for r in notes] == ["another note"]
    assert not logging.getLogger(REGISTRATION_LOGGER).filters  # the filter lives as long as the export


def test_a_disk_too_full_for_the_file_stops_before_the_export(checkpoint, tmp_path, monkeypatch, capsys):
    for module in ("onnx", "onnxscript"):
        pytest.importorskip(module)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(export_module.shutil, "disk_usage", lambda folder: usage(2**30, 2**30 - 2**20, 2**20))
    monkeypatch.setattr(torch.onnx, "export", None)  # reaching the exporter would fail the test otherwise
    out = tmp_path / "new" / "model.onnx"
    assert run_cli(["export", str(out), "--checkpoint", str(checkpoint)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"allspark export: error: {tmp_path}: 1.0 MiB free, but the ONNX file")
    assert not out.parent.exists()

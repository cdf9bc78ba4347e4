"""`allspark predict` and the Predictor API on a tiny randomly initialised model."""
import numpy as np
import pytest
import torch
from PIL import Image

from allspark.data.transforms import normalize_image
from allspark.predict import Predictor
from inference_helpers import PALETTE, run_cli, write_images


def test_folder_with_corrupt_file_writes_the_others_and_names_it(checkpoint, tmp_path, capsys):
    images = write_images(tmp_path / "in", [(40, 50), (64, 33)])
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "in" / "notes.txt").write_text("not an image, ignored by extension")
    out = tmp_path / "out"
    code = run_cli(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "in"), "--out", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "notes.txt" not in err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{p.stem}{suffix}.png" for p in images for suffix in ("", "_color", "_overlay"))
    for path in images:
        source = np.asarray(Image.open(path))
        mask_image = Image.open(out / f"{path.stem}.png")
        assert mask_image.mode == "L" and mask_image.size == (source.shape[1], source.shape[0])
        mask = np.asarray(mask_image)
        assert mask.max() < 3
        color = np.asarray(Image.open(out / f"{path.stem}_color.png"))
        np.testing.assert_array_equal(color, PALETTE[mask])
        overlay = np.asarray(Image.open(out / f"{path.stem}_overlay.png"))
        assert overlay.shape == (source.shape[0], 2 * source.shape[1], 3)
        np.testing.assert_array_equal(overlay[:, : source.shape[1]], source)


def test_predictor_api_equals_cli_output_for_every_input_type(checkpoint, tmp_path):
    (path,) = write_images(tmp_path / "in", [(45, 70)])
    out = tmp_path / "out"
    assert run_cli(["predict", "--checkpoint", str(checkpoint), str(path), "--out", str(out)]) == 0
    cli_mask = np.asarray(Image.open(out / f"{path.stem}.png"))
    predictor = Predictor(checkpoint)
    pil = Image.open(path)
    array = np.array(pil)
    for image in (pil, array, normalize_image(array)):
        mask = predictor.predict(image)
        assert mask.dtype == np.uint8 and mask.shape == (45, 70)
        np.testing.assert_array_equal(mask, cli_mask)
    probs = predictor.predict_probs(array)
    assert probs.shape == (3, 45, 70)
    np.testing.assert_array_equal(probs.argmax(0), cli_mask)


def test_batch_size_does_not_change_outputs(checkpoint, tmp_path):
    """Batches of equal-size images (a different size starts a new batch) give the same files."""
    inputs = tmp_path / "in"
    write_images(inputs, [(32, 32), (32, 32), (32, 32), (40, 48)])
    outputs = {}
    for batch in ("1", "3"):
        out = tmp_path / f"out{batch}"
        argv = ["predict", "--checkpoint", str(checkpoint), str(inputs / "*.png"), "--out", str(out),
                "--batch-size", batch]
        assert run_cli(argv) == 0
        outputs[batch] = {p.name: np.asarray(Image.open(p)) for p in out.iterdir()}
    assert len(outputs["1"]) == 12 and outputs["1"].keys() == outputs["3"].keys()
    for name, array in outputs["1"].items():
        np.testing.assert_array_equal(array, outputs["3"][name], err_msg=name)
    assert outputs["1"]["img3.png"].shape == (40, 48)


def test_tta_options_reach_the_predictor(checkpoint, tmp_path):
    (path,) = write_images(tmp_path / "in", [(40, 32)])
    out = tmp_path / "out"
    argv = ["predict", "--checkpoint", str(checkpoint), str(path), "--out", str(out), "--mode", "sliding",
            "--window", "32", "--flip", "--scales", "0.75,1"]
    assert run_cli(argv) == 0
    predictor = Predictor(checkpoint, mode="sliding", window=32, flip=True, scales=(0.75, 1.0))
    expected = predictor.predict(Image.open(path))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "img0.png")), expected)
    assert predictor.options == dict(mode="sliding", window=32, stride_ratio=2 / 3, flip=True, scales=(0.75, 1.0))


def test_batch_of_images_equals_each_image_alone(checkpoint):
    predictor = Predictor(checkpoint, mode="whole")
    images = [np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(3)]
    together = predictor.predict_probs_batch(images)
    alone = torch.cat([predictor.predict_probs_batch([image]) for image in images])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_refuses_to_overwrite_and_reports_missing_inputs(checkpoint, tmp_path, capsys):
    (path,) = write_images(tmp_path / "in", [(32, 32)])
    out = tmp_path / "out"
    assert run_cli(["predict", "--checkpoint", str(checkpoint), str(path), "--out", str(out)]) == 0
    before = (out / "img0.png").stat().st_mtime_ns
    assert run_cli(["predict", "--checkpoint", str(checkpoint), str(path), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "img0.png").stat().st_mtime_ns == before
    missing = str(tmp_path / "nothing_here.png")
    code = run_cli(["predict", "--checkpoint", str(checkpoint), str(path), missing, "--out", str(out), "--force"])
    assert code == 1
    assert "nothing_here.png" in capsys.readouterr().err


def test_predictor_rejects_wrong_inputs(checkpoint):
    predictor = Predictor(checkpoint)
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="normalised float"):
        predictor.predict(torch.zeros(8, 8, 3))
    with pytest.raises(ValueError, match="whole' or 'sliding"):
        Predictor(checkpoint, mode="center")

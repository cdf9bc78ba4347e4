"""`allspark predict` and the Predictor API on a tiny randomly initialised model."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from allspark.data.io import rgb_array
from allspark.data.normalize import normalize_image
from allspark.commands import predict as predict_command
from allspark.precision import autocast
from allspark.predict import outputs as predict_outputs
from allspark.predict import predictor as predictor_module
from allspark.predict.predictor import Predictor
from allspark.predict.tiled import tiled_rows
from allspark.predict.windows import predict_probs
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
    assert run_cli(["predict", "--checkpoint", str(checkpoint), str(path), "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert (out / "img0.png").stat().st_mtime_ns == before
    missing = str(tmp_path / "nothing_here.png")
    code = run_cli(["predict", "--checkpoint", str(checkpoint), str(path), missing, "--out", str(out), "--force"])
    assert code == 1
    assert "nothing_here.png" in capsys.readouterr().err


def test_no_input_images_stop_before_the_model_loads_or_out_is_made(checkpoint, tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(predict_command, "Predictor", None)  # loading the model would fail the test
    out = tmp_path / "out"
    code = run_cli(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "empty"), str(tmp_path / "*.png"),
                    "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and not out.exists()
    assert err[0].startswith("allspark predict: error: no images to predict: ") and "*.png: pattern matches no" in err[0]
    (path,) = write_images(tmp_path / "in", [(32, 32)])
    for target in predict_outputs.output_paths(out, path).values():
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(b"done")
    code = run_cli(["predict", "--checkpoint", str(checkpoint), str(path), "--out", str(out), "--skip-existing"])
    assert code == 0 and "nothing to predict" in capsys.readouterr().out


def test_predictor_rejects_wrong_inputs(checkpoint):
    predictor = Predictor(checkpoint)
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="normalised float"):
        predictor.predict(torch.zeros(8, 8, 3))
    with pytest.raises(ValueError, match="one of whole, sliding; got 'center'"):
        Predictor(checkpoint, mode="center")


def test_images_under_32_px_are_skipped_with_one_line_each(checkpoint, tmp_path, capsys):
    inputs = tmp_path / "in"
    (good,) = write_images(inputs, [(40, 36)])
    Image.new("RGB", (1, 1)).save(inputs / "dot.png")
    Image.new("RGB", (200, 20)).save(inputs / "strip.png")
    out = tmp_path / "out"
    assert run_cli(["predict", "--checkpoint", str(checkpoint), str(inputs), "--out", str(out)]) == 1
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 2 and "Traceback" not in "".join(warnings)
    assert "dot.png: skipped, image is 1x1 px" in warnings[0] and "strip.png" in warnings[1]
    assert sorted(p.name for p in out.iterdir()) == [f"{good.stem}{s}.png" for s in ("", "_color", "_overlay")]
    with pytest.raises(ValueError, match="at least 32 px"):
        Predictor(checkpoint).predict(np.zeros((31, 64, 3), dtype=np.uint8))


def test_large_image_goes_through_bounded_windows_equal_to_whole_sliding(checkpoint, tmp_path, capsys, monkeypatch):
    """Above --max-pixels: one window-sized input per model call, row blocks of at most one window,
    and the same result as a sliding window holding the whole image's probabilities."""
    (path,) = write_images(tmp_path / "in", [(200, 300)])
    out = tmp_path / "out"
    argv = ["predict", "--checkpoint", str(checkpoint), str(path), "--out", str(out), "--window", "64",
            "--max-pixels", "10000"]
    assert run_cli(argv) == 0
    note = "300x200 px > 10000 pixels (--max-pixels), sliding window 64 stride 43, 35 windows"
    assert note in capsys.readouterr().err
    predictor = Predictor(checkpoint, window=64, max_pixels=10_000)
    inputs, blocks = [], []
    model = predictor.model
    predictor.model = lambda images: inputs.append(tuple(images.shape)) or model(images)

    def recorded_rows(*args):
        for top, rows in tiled_rows(*args):
            blocks.append((top, tuple(rows.shape)))
            yield top, rows

    monkeypatch.setattr(predictor_module, "tiled_rows", recorded_rows)
    image = np.asarray(Image.open(path))
    probs = torch.from_numpy(predictor.predict_probs(image))
    assert inputs == [(1, 3, 64, 64)] * 35
    assert [top for top, _ in blocks] == [0, 43, 86, 129, 136]
    assert all(rows <= 64 and width == 300 for _, (_, rows, width) in blocks) and sum(b[1][1] for b in blocks) == 200
    with autocast(predictor.device, predictor.precision.mode):  # the precision predict ran in
        whole = predict_probs(model, normalize_image(image)[None], mode="sliding", window=64)[0]
    torch.testing.assert_close(probs, whole, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "img0.png")), whole.argmax(0).numpy())


def test_default_settings_tile_a_4000x3000_image_but_not_a_1000x750_one(checkpoint):
    predictor = Predictor(checkpoint)
    assert predictor.tiling(3000, 4000) == 512 and predictor.tiling(750, 1000) is None
    assert Predictor(checkpoint, tile="off").tiling(3000, 4000) is None
    assert Predictor(checkpoint, mode="sliding", window=96).tiling(3000, 4000) == 96
    assert Predictor(checkpoint, scales=(1.0, 1.5)).tiling(750, 1000) == 512  # 1500x1125 at scale 1.5


def test_16_bit_grey_png_is_scaled_to_8_bits(checkpoint, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    grey = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)  # 0..64491
    Image.fromarray(grey).save(inputs / "deep.png")
    assert Image.open(inputs / "deep.png").mode == "I;16"
    out = tmp_path / "out"
    assert run_cli(["predict", "--checkpoint", str(checkpoint), str(inputs), "--out", str(out)]) == 0
    expected = np.repeat(np.round(grey / 257).astype(np.uint8)[:, :, None], 3, axis=2)
    shown = np.asarray(Image.open(out / "deep_overlay.png"))[:, :64]
    np.testing.assert_array_equal(shown, expected)
    mask = np.asarray(Image.open(out / "deep.png"))
    predictor = Predictor(checkpoint)
    np.testing.assert_array_equal(mask, predictor.predict(expected))
    np.testing.assert_array_equal(mask, predictor.predict(Image.open(inputs / "deep.png")))


@pytest.mark.parametrize("mode", ["P", "LA", "RGBA", "CMYK", "1", "I"])
def test_other_image_modes_become_rgb(mode, tmp_path):
    source = Image.fromarray(np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)).convert(mode)
    array = rgb_array(source, "x.png")
    assert array.shape == (6, 5, 3) and array.dtype == np.uint8
    expected = source.convert("L") if mode == "I" else source
    np.testing.assert_array_equal(array, np.asarray(expected.convert("RGB")))


def test_float_image_is_refused_naming_the_file(checkpoint, tmp_path, capsys):
    (good,) = write_images(tmp_path / "in", [(32, 32)])
    Image.fromarray(np.ones((40, 40), dtype=np.float32)).save(tmp_path / "in" / "float.tif")
    argv = ["predict", "--checkpoint", str(checkpoint), str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    assert run_cli(argv) == 1
    assert "float.tif: skipped, 32-bit float image" in capsys.readouterr().err
    assert (tmp_path / "out" / f"{good.stem}.png").is_file()


def test_legend_lists_index_name_and_colour(checkpoint, tmp_path):
    (path,) = write_images(tmp_path / "in", [(32, 32)])
    out = tmp_path / "out"
    assert run_cli(["predict", "--checkpoint", str(checkpoint), str(path), "--out", str(out), "--legend"]) == 0
    entries = json.loads((out / "legend.json").read_text())
    assert entries == [{"index": i, "name": f"c{i}", "color": PALETTE[i].tolist()} for i in range(3)]
    legend = np.asarray(Image.open(out / "legend.png"))
    assert legend.shape[0] == 3 * 20
    for i in range(3):
        np.testing.assert_array_equal(legend[i * 20 + 10, 10], PALETTE[i])
    assert run_cli(["predict", "--checkpoint", str(checkpoint), str(path), "--out", str(out), "--legend"]) == 1


def test_threads_flag_sets_torch_threads(checkpoint, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    (path,) = write_images(tmp_path / "in", [(32, 32)])
    assert run_cli(["predict", "--checkpoint", str(checkpoint), str(path), "--out", str(tmp_path / "o"),
                    "--threads", "2"]) == 0
    assert calls == [2]
    assert run_cli(["predict", "--checkpoint", str(checkpoint), str(path), "--out", str(tmp_path / "p"),
                    "--threads", "0"]) == 2
    assert "--threads: expected a positive integer, got '0'" in capsys.readouterr().err

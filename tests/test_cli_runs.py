"""`allspark eval --checkpoint RUN` without a config, `--threads` on train and eval, a hub id that
cannot be fetched offline, and presets whose split lists are missing: each a one-line answer."""
import json
import re
import shlex
from pathlib import Path

import pytest
import torch

from allspark.cli import build_parser
from allspark.commands.options import DEVICES
from allspark.config.loading import load_config
from allspark.data.loaders import build_labeled_loader, build_unlabeled_loader
from allspark.data.synthetic import generate_synthetic
from allspark.distributed import resolve_device
from allspark.encoders.mit import MiTEncoder
from allspark.encoders.specs import encoder_spec
from allspark.errors import ConfigError, DeviceError
from allspark.models import build_model
from allspark.models.pretrained import load_pretrained_encoder
from allspark.runs.weights_file import read_weights, save_weights

from inference_helpers import run_cli

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid-mini"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory with a randomly initialised best checkpoint of a tiny synthetic config."""
    root = tmp_path_factory.mktemp("data")
    generate_synthetic(root, num_train=2, num_val=2, size=64, seed=0, num_classes=4)
    run = root / "run"
    cfg = load_config("demo", [f"data.root={root}", f"run_dir={run}", "model.crop_size=32", "data.workers=0"])
    torch.manual_seed(0)
    save_weights(run / "checkpoints" / "best.safetensors", build_model(cfg).state_dict(), cfg)
    return run


def test_eval_without_config_uses_the_saved_one(run_dir, tmp_path):
    assert run_cli(["eval", "--checkpoint", str(run_dir), "--out", str(tmp_path), "--threads", "1"]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert (result["miou_over"], len(result["iou"]), result["mode"]) == ("present", 4, "whole")


def test_eval_without_config_takes_overrides(run_dir, tmp_path):
    assert run_cli(["eval", "eval.miou_over=all", "--checkpoint", str(run_dir), "--out", str(tmp_path),
                    "eval.window_placement=release", "eval.crop_size=48", "--mode", "sliding"]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    # 64 px images, window 48, stride 32: windows (0, 48) and (32, 64)
    assert (result["miou_over"], result["window_placement"], result["mode"]) == ("all", "release", "sliding")
    iou = torch.tensor(result["iou"], dtype=torch.float64)
    assert result["miou"] == pytest.approx(float(iou.nan_to_num(0).mean()))


def test_eval_and_predict_never_read_the_pretrained_source(run_dir, tmp_path, offline_hub):
    """The weights file holds every weight: a checkpoint trained from a hub id evaluates and predicts offline."""
    state, cfg = read_weights(run_dir / "checkpoints" / "best.safetensors")
    cfg.model.pretrained = "nvidia/mit-b0"
    save_weights(tmp_path / "w.safetensors", state, cfg)
    assert run_cli(["eval", "--checkpoint", str(tmp_path / "w.safetensors"), "--out", str(tmp_path)]) == 0
    image = str(Path(cfg.data.root) / "images" / "val_00000.jpg")
    assert run_cli(["predict", image, "--checkpoint", str(tmp_path / "w.safetensors"), "--out", str(tmp_path)]) == 0


def test_eval_counts_and_names_skipped_validation_images(run_dir, tmp_path, capsys, caplog):
    root = Path(read_weights(run_dir / "checkpoints" / "best.safetensors")[1].data.root)
    gone = [f"images/gone{k}.jpg" for k in range(5)]
    (tmp_path / "val.txt").write_text((root / "val.txt").read_text() + "".join(f"{g} masks/val_00000.png\n" for g in gone))
    assert run_cli(["eval", "data.skip_bad_samples=true", f"data.val_list={tmp_path / 'val.txt'}",
                    "--checkpoint", str(run_dir), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["images"] == 2 and result["skipped"] == [str(root / g) for g in gone]
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if "warning" in line]
    assert warning == [f"allspark eval: warning: 5 validation image(s) skipped (data.skip_bad_samples), not in the "
                       f"mIoU: {root / gone[0]}: missing file (listed as image); {root / gone[1]}: missing file "
                       f"(listed as image); {root / gone[2]}: missing file (listed as image); and 2 more"]
    assert "(2 images)" in captured.out and "skipping bad sample" not in captured.err + caplog.text


def test_eval_threads_sets_torch_threads(run_dir, tmp_path):
    assert run_cli(["eval", "--checkpoint", str(run_dir), "--out", str(tmp_path), "--threads", "2"]) == 0
    assert torch.get_num_threads() == 2


def test_train_threads_sets_torch_threads(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr("allspark.commands.train.train", lambda cfg, **kw: seen.append(torch.get_num_threads()))
    assert run_cli(["train", "demo", f"run_dir={tmp_path}", "--threads", "3"]) == 0
    assert seen == [3]


def test_threads_must_be_positive(capsys):
    assert run_cli(["train", "demo", "--threads", "0"]) == 2
    assert "--threads: expected a positive integer, got '0'" in capsys.readouterr().err


@pytest.fixture
def offline_hub(monkeypatch):
    """No network and an empty cache: the hub lookup fails at once; a download attempt fails the test."""
    import huggingface_hub
    from transformers import SegformerModel

    def unreachable(*args, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    def no_download(*args, **kwargs):
        raise AssertionError("from_pretrained was called although the hub cannot be reached")

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    monkeypatch.setattr(SegformerModel, "from_pretrained", no_download)


def test_unreachable_hub_id_is_a_one_line_config_error(offline_hub):
    with pytest.raises(ConfigError, match=r"model.pretrained 'nvidia/mit-b0'.*cannot be reached") as err:
        load_pretrained_encoder(MiTEncoder(encoder_spec("mit_b0")), "nvidia/mit-b0")
    assert "model.pretrained=null" in str(err.value) and "\n" not in str(err.value)


def test_offline_train_exits_with_one_line(offline_hub, tmp_path, capsys):
    root = tmp_path / "data"
    generate_synthetic(root, num_train=4, num_val=1, size=32, seed=0, num_classes=4)
    code = run_cli(["train", "demo", f"data.root={root}", "data.labeled_list=train.txt",
                    "data.unlabeled_list=train.txt", f"run_dir={tmp_path / 'run'}", "model.pretrained=nvidia/mit-b0",
                    "--threads", "1", "--no-progress"])
    # the lists are the same file: the warning about images in both is a log line before the error
    err = [line for line in capsys.readouterr().err.strip().splitlines() if " WARNING " not in line]
    assert code != 0
    assert len(err) == 1 and "model.pretrained" in err[0] and "model.pretrained=null" in err[0]


def test_hub_id_in_the_local_cache_is_not_looked_up(monkeypatch):
    import huggingface_hub

    from allspark.models.pretrained import _check_hub

    def unreachable(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: "/cache/config.json")
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    _check_hub("nvidia/mit-b0")  # cached: no network needed


def test_hub_offline_mode_fails_fast(monkeypatch):
    import huggingface_hub

    from allspark.models.pretrained import _check_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="model.pretrained 'nvidia/mit-b0'.*offline mode"):
        _check_hub("nvidia/mit-b0")


def split_command(message: str) -> list[str]:
    """The `allspark splits ...` command quoted in a missing-list message, as arguments."""
    command = re.search(r"`(allspark splits [^`]+)`", message)
    assert command, message
    return shlex.split(command.group(1))[1:]


def test_missing_split_list_names_the_splits_command(tmp_path):
    root = tmp_path / "data"
    generate_synthetic(root, num_train=8, num_val=1, size=32, seed=0, num_classes=4)
    cfg = load_config("demo", [f"data.root={root}", "data.labeled_list=splits/1_4/labeled.txt",
                               "data.unlabeled_list=splits/1_4/unlabeled.txt", "train.batch_size=2"])
    with pytest.raises(ConfigError, match="data.labeled_list") as err:
        build_labeled_loader(cfg)
    argv = split_command(str(err.value))
    assert argv[argv.index("--fraction") + 1] == "1/4" and argv[argv.index("--out") + 1] == str(root / "splits/1_4")
    assert run_cli(argv) == 0
    assert len(build_labeled_loader(cfg).dataset) == 2 and len(build_unlabeled_loader(cfg).dataset) == 6


@pytest.mark.skipif(not CAMVID.is_dir(), reason="needs ../shared/data/camvid-mini")
@pytest.mark.parametrize("preset", ["camvid/sup", "camvid/semi", "camvid/allspark"])
def test_camvid_preset_says_which_split_to_make(preset, tmp_path):
    cfg = load_config(preset, [f"data.root={CAMVID}"])
    with pytest.raises(ConfigError, match="data.labeled_list") as err:
        build_labeled_loader(cfg)
    argv = split_command(str(err.value))
    assert argv[argv.index("--fraction") + 1] == "1/8"
    argv[argv.index("--out") + 1] = str(tmp_path)  # the shared data is read-only
    assert run_cli(argv) == 0
    lists = [f"data.labeled_list={tmp_path / 'labeled.txt'}", f"data.unlabeled_list={tmp_path / 'unlabeled.txt'}"]
    cfg = load_config(preset, [f"data.root={CAMVID}", "data.workers=0", *lists])
    assert len(build_labeled_loader(cfg).dataset) == 46


@pytest.mark.parametrize("command,rest", [
    (["train"], ["demo"]), (["eval"], ["demo", "--checkpoint", "run"]),
    (["predict"], ["a.jpg", "--checkpoint", "run", "--out", "o"]),
    (["viz", "features"], ["a.jpg", "--checkpoint", "run", "--out", "o.png"]),
    (["viz", "grouping"], ["a.jpg", "--checkpoint", "run", "--out", "o.png"]),
    (["viz", "memory"], ["--checkpoint", "run", "--out", "o.png"])])
def test_device_means_the_same_for_every_command(command, rest):
    parser = build_parser(command)
    assert parser.parse_args([*command, *rest]).device == "auto"
    for name in DEVICES:
        assert parser.parse_args([*command, "--device", name, *rest]).device == name
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--device", "gpu", *rest])


def test_resolve_device():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda", 0) == torch.device("cuda", 0)
    else:
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda")


def test_eval_which_picks_the_run_checkpoint(run_dir, monkeypatch):
    seen = {}
    monkeypatch.setattr("allspark.commands.evaluate.run_evaluation", lambda *args, **kwargs: seen.update(kwargs) or {})
    assert run_cli(["eval", "--checkpoint", str(run_dir), "--which", "latest"]) == 0
    assert seen["which"] == "latest"
    assert run_cli(["eval", "--checkpoint", str(run_dir)]) == 0
    assert seen["which"] == "best"


def test_eval_without_checkpoint_is_a_usage_error(capsys):
    assert run_cli(["eval", "demo", "train.lr=0.1"]) == 2
    assert "the following arguments are required: --checkpoint" in capsys.readouterr().err


def test_export_checks_the_format_before_reading_anything(tmp_path, capsys):
    missing = tmp_path / "absent.safetensors"
    assert run_cli(["export", str(tmp_path / "out.onnx"), "--checkpoint", str(missing), "--format", "tflite"]) == 2
    err = capsys.readouterr().err
    assert "'tflite'" in err and "absent.safetensors" not in err and not (tmp_path / "out.onnx").exists()

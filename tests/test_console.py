"""What the console shows (issue 32, items 5, 6 and 8): one line naming the files of a `base:` cycle, overrides
blamed on the command line, preset suggestions among the listed presets, the demo's folders ignored by git, no run
folder left by a failed start, progress as plain lines off a terminal."""
import shutil
import subprocess
from pathlib import Path

import pytest

from allspark.demo import default_folders
from allspark.presets import listed_presets
from allspark.progress import progress_bar
from engine_helpers import make_train_data
from inference_helpers import run_cli

REPO = Path(__file__).resolve().parents[1]


def _one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_base_cycle_is_one_line_naming_its_files(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain:\n  lr: 0.1\n")
    assert run_cli(["presets", str(tmp_path / "a.yaml")]) == 2
    line = _one_error_line(capsys)
    assert "cycle" in line and f"{tmp_path / 'a.yaml'} -> {tmp_path / 'b.yaml'} -> {tmp_path / 'a.yaml'}" in line


def test_an_eval_override_of_the_embedded_config_is_blamed_on_the_command_line(checkpoint, capsys):
    assert run_cli(["eval", "--checkpoint", str(checkpoint), "eval.crop_size=8"]) == 2
    line = _one_error_line(capsys)
    assert "command line: key 'eval.crop_size'" in line and "embedded config" not in line


@pytest.mark.parametrize("typo", ["camvid/bas", "camvid/allspak", "pascal/bse"])
def test_a_preset_typo_suggests_only_listed_presets(typo, capsys):
    assert run_cli(["presets", typo]) == 2
    suggested = _one_error_line(capsys).split("did you mean ")[-1].rstrip("?").split(" or ")
    assert suggested and set(suggested) <= set(listed_presets()), suggested


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs the git checkout")
@pytest.mark.parametrize("seeds", [(0, 0), (2, 0), (0, 3), (1, 5)])
def test_the_demo_folders_are_ignored_by_git(seeds):
    for folder in default_folders(*seeds):
        path = f"{folder}/anything.png"
        assert subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO).returncode == 0, path


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_train_data(tmp_path_factory.mktemp("synthetic"))


@pytest.mark.parametrize("bad", ["model.num_classes=3", "data.labeled_list=nope.txt", "train.batch_size=64"])
def test_a_failed_check_at_the_start_of_train_leaves_no_run_folder(bad, data_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run_cli(["train", "demo", f"data.root={data_root}", f"run_dir={run_dir}", "method=sup", "model.num_classes=4",
                    "model.crop_size=64", "train.max_iters=1", "--no-progress", "--threads", "1", bad]) != 0
    _one_error_line(capsys)
    assert not run_dir.exists()


def test_progress_off_a_terminal_is_a_line_every_tenth(capsys):
    assert list(progress_bar(range(20), desc="count")) == list(range(20))
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" INFO ")[1].split(",")[0] for line in lines] == [f"count: {n}/20 ({n * 5}%)"
                                                                          for n in range(2, 21, 2)]


def test_train_off_a_terminal_prints_a_line_every_log_every_steps(data_root, tmp_path, capsys):
    assert run_cli(["train", "demo", f"data.root={data_root}", f"run_dir={tmp_path / 'run'}", "method=sup",
                    "model.num_classes=4", "model.crop_size=64", "train.max_iters=4", "train.log_every=2",
                    "train.eval_every=100", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "%|" not in err
    assert [line.split(" INFO ")[1].split(",")[0] for line in err.splitlines() if " INFO sup: " in line] == [
        "sup: 2/4 (50%)", "sup: 4/4 (100%)"]
    run_cli(["eval", "--checkpoint", str(tmp_path / "run"), "--threads", "1", "--no-progress"])
    assert "INFO eval" not in capsys.readouterr().err


def test_check_data_takes_the_overrides_train_takes(data_root, capsys):
    assert run_cli(["check-data", "demo", f"data.root={data_root}", "model.num_classes=4"]) == 0
    assert f"under {data_root}, 4 classes: no problems" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "check-data"])
def test_a_missing_relative_data_root_names_the_folder_it_was_read_from(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_cli([command, "camvid/allspark", "model.pretrained=null"]) == 2
    line = _one_error_line(capsys)
    assert f"no folder {tmp_path.parent / 'shared' / 'data' / 'camvid-mini'}" in line
    assert f"relative to the current folder, {tmp_path}" in line

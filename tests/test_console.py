"""What the console shows (issue 32, items 5, 6 and 8): one line naming the files of a `base:` cycle, overrides
blamed on the command line, preset suggestions among the listed presets, the demo's folders ignored by git."""
import shutil
import subprocess
from pathlib import Path

import pytest

from allspark.demo import default_folders
from allspark.presets import listed_presets
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

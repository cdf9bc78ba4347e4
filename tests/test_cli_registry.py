"""The lazy command registry: `allspark --help` names every subcommand without importing one, a command imports its
own module only, and predict never loads the augmentation library."""
import json
import subprocess
import sys

import pytest

from allspark.cli import build_parser, command_name
from allspark.commands import COMMANDS


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code` (SystemExit from --help ignored)."""
    script = (f"import json, sys\ntry:\n    {code}\nexcept SystemExit:\n    pass\n"
              "print(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_help_names_every_command_and_imports_none(capsys):
    with pytest.raises(SystemExit):
        build_parser(["--help"]).parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, (_, help_line) in COMMANDS.items():
        assert name in text and help_line in text
    modules = loaded_after("from allspark.cli import main; main(['--help'])")
    assert not {m for m in modules if m.startswith("allspark.commands.") or m == "torch"}


def test_a_command_imports_its_module_alone():
    modules = loaded_after("from allspark.cli import build_parser; build_parser(['predict', 'a.jpg'])")
    commands = {m for m in modules if m.startswith("allspark.commands.") and m != "allspark.commands.options"}
    assert commands == {"allspark.commands.predict"}
    assert "albumentations" not in modules  # normalisation lives beside the model's input contract, not in transforms


@pytest.mark.parametrize("name", COMMANDS)
def test_every_registered_module_adds_its_command(name):
    parser = build_parser([name])
    sub = next(action for action in parser._actions if action.dest == "command")
    assert len(sub.choices[name]._actions) > 1  # more than the -h a name alone gets
    assert len(sub.choices[next(other for other in COMMANDS if other != name)]._actions) == 1


def test_command_name_skips_options():
    assert command_name(["--debug", "eval", "--checkpoint", "x"]) == "eval"
    assert command_name(["--help"]) is None

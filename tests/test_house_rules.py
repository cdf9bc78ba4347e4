"""The house rules of docs/ARCHITECTURE.md that imports alone do not show, read from the source: small files, a
family's rules only in its encoder class, and one atomic write."""
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "allspark"
MAX_LINES = 300


def sources(exclude: str | None = None) -> dict[str, str]:
    """{path relative to the package: text} of every module, without the room `exclude`."""
    return {str(path.relative_to(PACKAGE)): path.read_text() for path in sorted(PACKAGE.rglob("*.py"))
            if exclude is None or path.relative_to(PACKAGE).parts[0] != exclude}


def test_no_module_is_longer_than_the_limit():
    long = {name: text.count("\n") for name, text in sources().items() if text.count("\n") > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_only_the_encoder_classes_branch_on_a_family():
    branch = re.compile(r"family\s*(==|!=|\bin\b)|==\s*[\"'](mit|dinov2|dinov2_reg|dinov3_vit|dinov3_convnext)[\"']")
    found = [f"{name}:{number}" for name, text in sources(exclude="encoders").items()
             for number, line in enumerate(text.splitlines(), 1) if branch.search(line)]
    assert not found, f"branching on an encoder family outside encoders/: {found}"


def test_files_are_replaced_in_one_place():
    """os.replace (the rename that makes a write atomic) lives in runs/ only: every writer goes through it."""
    found = [name for name, text in sources(exclude="runs").items() if re.search(r"os\.replace|\.replace\(tmp", text)]
    assert not found, f"files replaced outside runs/: {found}"

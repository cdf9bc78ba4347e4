"""Import a module of the measuring harness in ../shared/reference/harness, which runs the authors' releases.

The harness is a measuring kit beside the project, never part of it: a script that needs it stops with one line
when it is absent. Its stand-in `torchvision` must not be seen by transformers, so our models load first.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path


def import_harness(reference: Path, module: str, caller: str):
    """The harness's `module` (e.g. "official"), or exit naming what is missing: the folder or einops."""
    harness = Path(reference) / "harness"
    if not (harness / f"{module}.py").is_file():
        sys.exit(f"{caller}: the release's harness is absent ({harness / (module + '.py')}); "
                 "pass --reference PATH to the shared/reference folder")
    try:
        importlib.import_module("einops")
    except ImportError:
        sys.exit(f"{caller}: the release needs einops: pip install einops (into this venv)")
    importlib.import_module("allspark.models")  # transformers before the harness's stand-in torchvision
    if str(harness) not in sys.path:
        sys.path.insert(0, str(harness))
    return importlib.import_module(module)

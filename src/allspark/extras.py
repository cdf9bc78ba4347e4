"""The optional dependencies (`pip install 'allspark-seg[NAME]'`), checked before the work that needs them, so a
plain install ends in one line naming the extra instead of a ModuleNotFoundError deep inside a library."""
from __future__ import annotations

import importlib.util

from allspark.errors import MissingDependencyError

EXTRAS = {"export": ("onnx", "onnxscript", "onnxruntime"), "label": ("label_studio_sdk", "ijson")}  # as pyproject.toml's [project.optional-dependencies]


def require_extra(extra: str, purpose: str) -> None:
    """Raise MissingDependencyError naming the extra when any of its modules is not installed."""
    missing = [module for module in EXTRAS[extra] if importlib.util.find_spec(module) is None]
    if missing:
        raise MissingDependencyError(f"{purpose} needs {', '.join(missing)}, not installed here: "
                                     f"pip install 'allspark-seg[{extra}]'")

"""An optional dependency that is missing is named with its extra, in one line, before any work."""
import sys

import pytest

from allspark.errors import MissingDependencyError
from allspark.extras import require_extra


def test_a_missing_extra_is_named_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r"allspark export needs onnxscript, not installed here: "
                                                     r"pip install 'allspark-seg\[export\]'"):
        require_extra("export", "allspark export")

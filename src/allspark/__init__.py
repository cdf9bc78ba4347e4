"""allspark-seg: semi-supervised semantic segmentation with AllSpark (CVPR 2024)."""
import importlib

__version__ = "0.1.0"

# Public names resolve on first use: every `allspark` command imports this package first, and the models and
# the predictor would add ~2.9 s to its start (python -X importtime -c 'import allspark.models').
_LAZY = {"build_model": "allspark.models", "load_official": "allspark.models", "Predictor": "allspark.predict.predictor",
         "register_encoder": "allspark.encoders.registry"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'allspark' has no attribute {name!r}")

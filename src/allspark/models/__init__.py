"""The AllSpark segmenter (spec 1) and its weight converters. Names resolve on first use, so the
CLI can register `convert-official` without importing transformers."""
import importlib

_LAZY = {"AllSparkSegmenter": "allspark.models.segmenter", "build_model": "allspark.models.segmenter",
         "load_official": "allspark.models.official"}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'allspark.models' has no attribute {name!r}")

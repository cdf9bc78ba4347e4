"""The AllSpark segmenter (METHODS.md 1): `build_model` for training, `load_model` for our weights files,
`load_official` for checkpoints of the authors' release."""
from allspark.models.factory import build_model
from allspark.models.official import load_official
from allspark.models.segmenter import AllSparkSegmenter
from allspark.models.weights import load_model

__all__ = ["AllSparkSegmenter", "build_model", "load_model", "load_official"]

"""The AllSpark segmenter (spec 1) and its weight converters."""
from allspark.models.convert import load_official
from allspark.models.segmenter import AllSparkSegmenter, build_model

__all__ = ["AllSparkSegmenter", "build_model", "load_official"]

"""allspark-seg: semi-supervised semantic segmentation with AllSpark (CVPR 2024)."""
__version__ = "0.1.0"

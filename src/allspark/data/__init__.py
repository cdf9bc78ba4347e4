"""Data layer: readers, list-file datasets, layouts, splits, augmentation, synthetic data, checks, loaders."""
from allspark.data.checks import check_data
from allspark.data.datasets import ListDataset
from allspark.data.io import DataError
from allspark.data.layouts import Layout, cityscapes_label_ids_to_train_ids, get_layout
from allspark.data.loaders import build_labeled_loader, build_unlabeled_loader, build_val_loader
from allspark.data.splits import make_split
from allspark.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TrainTransform, normalize_image

__all__ = [
    "DataError", "IMAGENET_MEAN", "IMAGENET_STD", "Layout", "ListDataset", "TrainTransform", "build_labeled_loader",
    "build_unlabeled_loader", "build_val_loader", "check_data", "cityscapes_label_ids_to_train_ids", "get_layout",
    "make_split", "normalize_image",
]

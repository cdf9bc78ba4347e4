"""Data layer: readers (io), layouts, list-file datasets, splits, augmentation, synthetic data, checks, loaders.

Nothing is re-exported here: `allspark.data.checks` and `allspark.data.splits` serve the CLI without torch,
which `allspark.data.loaders` would load (~1.1 s at every command's start, python -X importtime)."""

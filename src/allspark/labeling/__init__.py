"""The labelling tools people label in (Label Studio, CVAT): a suggestion's predicted masks out to them as
pre-annotations, the masks they drew back into the dataset and its splits."""

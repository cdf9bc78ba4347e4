"""The class names a labelling tool sees, and the names it sends back matched to class indices by name."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from allspark.data.io import IGNORE_INDEX
from allspark.errors import InputError

IGNORE_NAME = "ignore"  # the label an annotator draws where the pixels should not count (written as 255)
IGNORE_COLOUR = (255, 255, 255)
UNDRAWN_NAMES = ("background",)  # CVAT's name for the pixels nobody drew (written as 255 unless it is a class)


@dataclass(frozen=True)
class ClassSet:
    """The dataset's K class names and colours, plus the ignore label, as the tools show them."""
    names: tuple[str, ...]
    palette: np.ndarray  # (K, 3) uint8

    @classmethod
    def of(cls, names: Sequence[str], palette: np.ndarray) -> ClassSet:
        """Refuses duplicate names or colours: a tool could not tell those classes apart."""
        names = tuple(str(name) for name in names)
        for what, keys in (("name", names), ("colour", [tuple(int(c) for c in rgb) for rgb in palette])):
            twice = sorted({str(key) for key in keys if keys.count(key) > 1})
            if twice:
                raise InputError(f"class {what}s {', '.join(twice)} given to more than one class; a labelling tool "
                                 "could not tell them apart (edit classes.txt)")
        return cls(names, np.asarray(palette, np.uint8))

    def labels(self) -> list[tuple[str, tuple[int, int, int]]]:
        """(name, colour) of every label a tool offers: the classes, then the ignore label (unless a class has its
        name)."""
        labels = [(name, tuple(int(c) for c in rgb)) for name, rgb in zip(self.names, self.palette)]
        if IGNORE_NAME not in self.names:
            labels.append((IGNORE_NAME, IGNORE_COLOUR))
        return labels

    def index(self, name: str, where: str) -> int:
        """The class index of a label name (255 for the ignore label); an unknown name is refused naming `where`."""
        if name in self.names:
            return self.names.index(name)
        if name == IGNORE_NAME or name in UNDRAWN_NAMES:
            return IGNORE_INDEX
        raise InputError(f"{where}: class name {name!r} is not one of the dataset's classes "
                         f"({', '.join(self.names)}) nor '{IGNORE_NAME}'")

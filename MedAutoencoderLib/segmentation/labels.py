"""Label values of a segmentation model: the values the user's label maps hold, kept as they are in the outputs.

The network predicts class indices 0..n-1; class 0 is the background (value 0) and class i the i-th smallest
label value above it. The model file records the values and a name for each, so that a labelmap written by
``segment`` holds the user's own values (a DLMUSE-merged map of 1..4, FreeSurfer's 2, 3, 41...).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from MedAutoencoderLib.errors import ConfigurationError, InputImageError

#: More label values than this is no tissue segmentation (a float image given as labels, say).
MAX_LABELS = 255


@dataclass
class LabelSet:
    """The label values a model segments (background 0 excluded) and their names, in ascending order."""

    values: List[int]
    names: List[str]

    @property
    def n_classes(self) -> int:
        """Network outputs: the background and one per label value."""
        return len(self.values) + 1

    def to_plain(self) -> Dict[str, list]:
        return {"values": [int(v) for v in self.values], "names": list(self.names)}

    @classmethod
    def from_plain(cls, data: Dict[str, list]) -> "LabelSet":
        return cls(values=[int(v) for v in data["values"]], names=[str(n) for n in data["names"]])

    def to_classes(self, labels: np.ndarray, name: str) -> np.ndarray:
        """Class indices (uint8) of a label array holding only this set's values and 0.

        Raises:
            InputImageError: a value that is not one of the set's (naming the file and the values).
        """
        lookup = {0: 0, **{v: i + 1 for i, v in enumerate(self.values)}}
        present = np.unique(labels)
        unknown = [int(v) for v in present if int(v) not in lookup]
        if unknown:
            raise InputImageError(f"{name}: holds label value(s) {_listed(unknown)} that the other label maps lack "
                                  f"(values: {_listed(self.values)})")
        classes = np.zeros(labels.shape, np.uint8)
        for value, index in lookup.items():
            if index:
                classes[labels == value] = index
        return classes

    def to_values(self, classes: np.ndarray) -> np.ndarray:
        """Label values of a class-index array, in the smallest unsigned integer type that holds them."""
        table = np.array([0, *self.values])
        dtype = np.uint8 if table.max() <= 255 else np.uint16 if table.max() <= 65535 else np.uint32
        return table.astype(dtype)[classes]


def _listed(values: Sequence[int], most: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:most])
    return shown + (f" and {len(values) - most} more" if len(values) > most else "")


def label_values(labels: np.ndarray, name: str) -> List[int]:
    """The label values above 0 of one label array.

    Raises:
        InputImageError: non-integer or negative values, no label at all, or more than :data:`MAX_LABELS`.
    """
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise InputImageError(f"{name}: is not a label map (it holds non-integer values); give integer labels, "
                                  "0 for the background")
    values = np.unique(labels)
    if values.size and values[0] < 0:
        raise InputImageError(f"{name}: holds negative label values ({int(values[0])}); labels are 0 (background) "
                              "and positive integers")
    values = [int(v) for v in values if v > 0]
    if not values:
        raise InputImageError(f"{name}: holds no label (all voxels are 0, the background)")
    if len(values) > MAX_LABELS:
        raise InputImageError(f"{name}: holds {len(values)} label values; a segmentation model takes at most "
                              f"{MAX_LABELS} (is it an image rather than a label map?)")
    return values


def label_set(values_per_map: Iterable[List[int]], names: Optional[Sequence[str]] = None) -> LabelSet:
    """The label set of a training set: every value any map holds, named by ``names`` (ascending order).

    Raises:
        ConfigurationError: ``names`` given, but not one per value.
    """
    values = sorted({v for values in values_per_map for v in values})
    if names:
        if len(names) != len(values):
            raise ConfigurationError(f"{len(names)} label name(s) given (--label-names) for {len(values)} label "
                                     f"value(s) ({_listed(values)}); give one name per value, in ascending order")
        return LabelSet(values, [str(n) for n in names])
    return LabelSet(values, [f"label_{v}" for v in values])

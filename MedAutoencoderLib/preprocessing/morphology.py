"""Binary dilation, erosion and closing of (z, y, x) masks with ITK's ball, in NumPy; bounding boxes and the
largest connected component of a mask.

Why not ``sitk.BinaryErode`` and friends: on the model grid they take 0.17-0.25 s each on two cores, which was
a tenth of a detection. ITK's ball of radius ``r`` (per axis) holds the offsets ``d`` with
``sum((d / (r + 0.5)) ** 2) <= 1``; it is the union of a few axis-aligned boxes, and dilating by a union of
boxes is the union of the box dilations, each a handful of shifted ORs. The results are the same voxels as
ITK's (the tests compare them for several radii, edges included), in a twentieth of the time.
"""
from __future__ import annotations

from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage as ndi

Radius = Tuple[int, int, int]  # (z, y, x) voxels


def _maximal_boxes(inside: List[Radius]) -> List[Radius]:
    """Of the offsets ``inside`` a ball (one octant, z, y, x >= 0), those no other offset dominates: the half-sizes
    of the boxes whose union is the ball."""
    return [box for box in inside
            if not any(other != box and all(o >= b for o, b in zip(other, box)) for other in inside)]


@lru_cache(maxsize=16)
def ball_as_boxes(radius: Radius) -> List[Radius]:
    """Half-sizes (z, y, x) of the maximal boxes whose union is ITK's ball of ``radius``."""
    return _maximal_boxes([(dz, dy, dx) for dz in range(radius[0] + 1) for dy in range(radius[1] + 1)
                           for dx in range(radius[2] + 1)
                           if sum((d / (r + 0.5)) ** 2 for d, r in zip((dz, dy, dx), radius)) <= 1.0])


@lru_cache(maxsize=16)
def euclidean_ball_as_boxes(radius: float) -> List[Radius]:
    """Half-sizes (z, y, x) of the maximal boxes whose union holds the offsets at most ``radius`` voxels away."""
    reach = int(np.floor(radius))
    return _maximal_boxes([(dz, dy, dx) for dz in range(reach + 1) for dy in range(reach + 1)
                           for dx in range(reach + 1) if dz * dz + dy * dy + dx * dx <= radius * radius])


def _dilate_by_box(mask: np.ndarray, half_size: Radius) -> np.ndarray:
    dilated = mask
    for axis, reach in enumerate(half_size):
        if reach == 0:
            continue
        grown = dilated.copy()
        for shift in range(1, reach + 1):
            later = [slice(None)] * 3
            earlier = [slice(None)] * 3
            later[axis], earlier[axis] = slice(shift, None), slice(None, -shift)
            grown[tuple(later)] |= dilated[tuple(earlier)]
            grown[tuple(earlier)] |= dilated[tuple(later)]
        dilated = grown
    return dilated


def dilate(mask: np.ndarray, radius: Sequence[int]) -> np.ndarray:
    """``sitk.BinaryDilate`` with a ball of ``radius`` (z, y, x): beyond the array counts as background."""
    mask = mask.astype(bool, copy=False)
    result = np.zeros_like(mask)
    for box in ball_as_boxes(tuple(int(r) for r in radius)):
        result |= _dilate_by_box(mask, box)
    return result


def dilate_euclidean(mask: np.ndarray, radius: float) -> np.ndarray:
    """The voxels at most ``radius`` voxels (Euclidean) from ``mask`` (a ball the same in every direction):
    what an exact distance map thresholded at ``radius`` gives, as a union of box dilations."""
    mask = mask.astype(bool, copy=False)
    result = np.zeros_like(mask)
    for box in euclidean_ball_as_boxes(float(radius)):
        result |= _dilate_by_box(mask, box)
    return result


def erode(mask: np.ndarray, radius: Sequence[int]) -> np.ndarray:
    """``sitk.BinaryErode`` with a ball of ``radius`` (z, y, x): beyond the array counts as foreground, as in
    ITK, so a mask touching the edge is not eaten from there. Erosion is the complement of the complement's
    dilation."""
    return ~dilate(~mask.astype(bool, copy=False), radius)


def close(mask: np.ndarray, radius: Sequence[int]) -> np.ndarray:
    """``sitk.BinaryMorphologicalClosing`` with a ball of ``radius`` (z, y, x) and ITK's safe border: padded
    by twice the radius so that the closing never meets the array's edge."""
    pad = [(2 * int(r), 2 * int(r)) for r in radius]
    closed = erode(dilate(np.pad(mask.astype(bool, copy=False), pad), radius), radius)
    return closed[tuple(slice(p, closed.shape[axis] - p) for axis, (p, _) in enumerate(pad))]


def bounding_box(mask: np.ndarray, grow: int = 0) -> Optional[Tuple[slice, ...]]:
    """The smallest box holding every True voxel of ``mask``, grown by ``grow`` voxels on every side (within the
    array); None when there is none.

    Args:
        mask: a boolean array of any dimension.
        grow: voxels added on each side.

    Returns:
        One slice per axis, or None for an empty mask. Found from the projections, each over the box found so far
        (after the first axis, a fraction of the array).
    """
    box: List[slice] = [slice(None)] * mask.ndim
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask[tuple(box)].any(axis=others))
        if hits.size == 0:
            return None
        start = (box[axis].start or 0) + int(hits[0])
        box[axis] = slice(start, start + int(hits[-1] - hits[0]) + 1)
    return tuple(slice(max(b.start - grow, 0), min(b.stop + grow, n)) for b, n in zip(box, mask.shape))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of ``mask`` (face-connected; the first in raster order among equals),
    labelled within its bounding box, which gives the same labels' order as the whole array.

    Args:
        mask: a boolean array of any dimension.

    Returns:
        A boolean array of ``mask``'s shape; ``mask`` itself when it has one component or none.
    """
    box = bounding_box(mask)
    if box is None:
        return mask
    labels, count = ndi.label(mask[box])
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    out = np.zeros_like(mask)
    out[box] = labels == np.argmax(sizes)
    return out

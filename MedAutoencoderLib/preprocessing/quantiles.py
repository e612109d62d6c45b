"""Exact percentiles of large volumes, faster than sorting them all.

NumPy's ``np.percentile`` partitions every value; the two order statistics a percentile interpolates between lie
among the few values near it, which a sample locates. Written here because neither NumPy nor MONAI selects order
statistics that way.
"""
from __future__ import annotations

import numpy as np

_SAMPLE_STEP = 101  # every 101st value locates the percentile
_SAMPLE_MARGIN = 0.5  # percentage points on each side of it that the sample's bounds span
_MIN_VALUES = 1_000_000  # below this, partitioning everything is as fast


def _lerp(a: np.ndarray, b: np.ndarray, t: float) -> float:
    """Linear interpolation as ``np.percentile`` computes it (from the nearer end)."""
    return float(b - (b - a) * (1 - t)) if t >= 0.5 else float(a + (b - a) * t)


def percentile(values: np.ndarray, q: float) -> float:
    """``float(np.percentile(values, q))`` (the default, linear method) of any array, the same number (but for
    NumPy's own float16 overflow to NaN at q = 100 over a million values, and the sign of a zero at the percentile).

    Args:
        values: an array of any shape and real dtype.
        q: the percentile, 0 to 100.

    Returns:
        The percentile: the values at the two ranks around ``(n - 1) q / 100`` interpolated, found by partitioning
        only the values between bounds that a sample places around it (all values where the bounds miss them, or
        where there are NaN).
    """
    flat = values.reshape(-1)
    n = flat.size
    if n < _MIN_VALUES:
        return float(np.percentile(flat, q))
    fraction = q / 100.0
    index = (n - 1) * fraction  # NumPy's virtual index of the linear method
    k = int(np.floor(index))
    t = index - k
    low, high = np.percentile(flat[::_SAMPLE_STEP], [max(q - _SAMPLE_MARGIN, 0.0), min(q + _SAMPLE_MARGIN, 100.0)])
    if np.issubdtype(flat.dtype, np.floating):  # bounds of the values' own type: float32 compared without upcasting
        low, high = flat.dtype.type(low), flat.dtype.type(high)  # (any bounds are right; the counts below check)
    last = min(k + 1, n - 1)
    below = int(np.count_nonzero(flat < low))
    above = int(np.count_nonzero(flat > high))
    # the ranks must lie between the bounds; counts that leave values out mean NaN, which np.percentile gives
    if below > k or last >= n - above or np.isnan(low) or np.isnan(high):
        return float(np.percentile(flat, q))
    if low == high:  # both ranks fall on one value (a background of zeros)
        return float(low) if below + int(np.count_nonzero(flat == low)) + above == n else float(np.percentile(flat, q))
    near = flat[(flat >= low) & (flat <= high)]
    if below + near.size + above != n:
        return float(np.percentile(flat, q))
    ranks = [k - below, last - below]
    pair = np.partition(near, ranks)[ranks]
    return _lerp(pair[0], pair[1], t)

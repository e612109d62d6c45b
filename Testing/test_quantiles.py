"""Exact percentiles of large volumes (preprocessing.quantiles)."""
from __future__ import annotations

import numpy as np
import pytest

from MedAutoencoderLib.preprocessing.quantiles import percentile


def _volumes():
    rng = np.random.default_rng(3)
    n = 1_200_000
    head = np.where(rng.random(n) < 0.45, 0.0, rng.gamma(2.0, 150.0, n)).astype(np.float32)  # zero background
    yield "MRI with a background of zeros", head.reshape(60, 100, 200)
    yield "noisy background", (head + rng.normal(0, 3, n).astype(np.float32)).reshape(60, 100, 200)
    yield "float64", rng.normal(size=n)
    yield "int16 CT", np.where(rng.random(n) < 0.4, -1024, rng.normal(40, 300, n)).astype(np.int16)
    yield "uint8", rng.integers(0, 255, n).astype(np.uint8)
    yield "small", rng.normal(size=1000).astype(np.float32)


@pytest.mark.parametrize("name, values", list(_volumes()))
@pytest.mark.parametrize("q", [0.0, 0.5, 1.0, 37.3, 99.0, 99.5, 100.0])
def test_the_same_number_as_numpy(name, values, q):
    assert percentile(values, q) == float(np.percentile(values, q)), name


def test_nan_gives_nan_as_numpy_does():
    values = np.where(np.arange(1_200_000) % 1000 == 7, np.nan, np.linspace(0, 1, 1_200_000)).astype(np.float32)
    assert np.isnan(percentile(values, 1.0)) and np.isnan(np.percentile(values, 1.0))

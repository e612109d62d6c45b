"""MedAutoencoderLib: autoencoders for unsupervised anomaly detection in medical volumes.

The package is importable without torch/MONAI being loaded: the public functions below are resolved lazily so
that ``import MedAutoencoderLib`` stays cheap inside 3D Slicer (and never imports ``slicer``/``qt``).

Typical use::

    from MedAutoencoderLib import load_model, detect_image, read_image
    model = load_model("brain.pt")
    result = detect_image(read_image("case.nii.gz"), model)
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "load_model": "api",
    "detect_image": "api",
    "detect_files": "api",
    "train_model": "api",
    "DetectOptions": "config",
    "TrainConfig": "config",
    "PreprocessConfig": "config",
    "ModelConfig": "config",
    "read_image": "io.volumes",
    "write_image": "io.volumes",
    "MedAutoencoderError": "errors",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        module = importlib.import_module(f"{__name__}.{_PUBLIC[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

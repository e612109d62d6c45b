"""MedAutoencoderLib: autoencoders for unsupervised anomaly detection in medical volumes.

The package is importable without torch/MONAI being loaded: the public functions below are resolved lazily so
that ``import MedAutoencoderLib`` stays cheap inside 3D Slicer (and never imports ``slicer``/``qt``).

Typical use::

    from MedAutoencoderLib import load_model, detect_image, read_image
    model = load_model("brain.pt")
    result = detect_image(read_image("case.nii.gz"), model)

Layout, one subpackage per concern; imports run one way, from the kernels up to :mod:`~MedAutoencoderLib.api` (the
facade) and from there to the command line, the worker and Slicer:

- ``config``, ``errors``: settings dataclasses (each ``train`` option declared once) and the user's errors;
- ``runtime``: device, allocator, thread pools, progress; ``io``: reading and checking volumes, output names and
  writing, model files (:class:`~MedAutoencoderLib.io.loaded_model.LoadedModel`), exports;
- ``data``: the bundled MNI template and its brain mask, the synthetic generator; ``brain``: brain masks;
  ``preprocessing``: the model grid, normalisation, morphology;
- ``networks``: autoencoders, losses, noise, latent codes; ``training``: trainer, samples, DDP;
- ``detection``: inference, scoring, median filter, the detection of volumes and files, read-ahead, evaluation;
  ``analysis``: features, classification, latent plots, generation;
- ``api``: the facade; above it ``cli`` (parser, commands, demo, exit codes), ``worker`` (jobs, standby worker,
  serve) and ``slicer`` (the MRML bridge and the Slicer module's job logic, both without Qt).

Subpackages re-export their public names and import them on first use, so ``import MedAutoencoderLib.worker``
inside Slicer loads no torch.
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

"""Shared fixtures of the core test suites: a tiny toy cohort on rotated, anisotropic grids, a lesioned case
with its ground truth, and tiny trained models (trained once per session, on the CPU)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import pytest
import SimpleITK as sitk

from MedAutoencoderLib.config import DetectionConfig, ModelConfig, PreprocessConfig, TrainConfig
from MedAutoencoderLib.data import synthetic
from MedAutoencoderLib.data import template as bundled_template

TOY_SPACING = (1.0, 1.1, 1.3)
# Small grid and a 90th-percentile normalisation: a 4 mm lesion is several per cent of the toy organ, which
# would move a 99th percentile (real brains are far larger than the lesions in them).
TINY_PREPROCESS = dict(spacing=(1.5, 1.5, 1.5), size=(32, 32, 32), upper_percentile=90.0)


def rotation_z(degrees: float) -> tuple:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


def oblique_direction() -> tuple:
    a, b = math.radians(25.0), math.radians(15.0)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    return tuple(float(v) for v in (rx @ ry).ravel())


COHORT_DIRECTIONS = [rotation_z(0.0), rotation_z(20.0), rotation_z(-35.0), rotation_z(90.0), oblique_direction()]


def brain_scans(folder: Path, names: Sequence[str], suffix: str) -> Path:
    """``folder`` with one copy of the MNI template at 2 mm (100x116x96) per name (``"abc"``: a, b, c): whole brains
    that the default model detects in about a second each on two cores (a batch long enough to interrupt)."""
    template = bundled_template.load_template()
    scan = sitk.Resample(template, [100, 116, 96], sitk.Transform(), sitk.sitkLinear, template.GetOrigin(),
                         (2.0, 2.0, 2.0), template.GetDirection(), 0.0, sitk.sitkFloat32)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        sitk.WriteImage(scan, str(folder / f"{name}{suffix}"))
    return folder


def toy(seed: int, direction=None, spacing=TOY_SPACING) -> sitk.Image:
    return synthetic.toy_volume(np.random.default_rng(seed), spacing=spacing, direction=direction)


def organ_mask(image: sitk.Image, erode: int = 2) -> sitk.Image:
    """The toy organ (intensity ~100 on a background ~1), eroded so that lesions stay well inside."""
    mask = sitk.Cast(image > 30, sitk.sitkUInt8)
    return sitk.BinaryErode(mask, [erode] * 3) if erode else mask


def tiny_train_config(data, out, name: str = "dae", epochs: int = 2, **overrides) -> TrainConfig:
    model = overrides.pop("model", None) or ModelConfig(
        name=name, channels=(8, 16) if name == "dae" else (8, 16, 32), latent_channels=8)
    return TrainConfig(
        data=[str(d) for d in data], out=str(out), model=model,
        preprocess=overrides.pop("preprocess", None) or PreprocessConfig(**TINY_PREPROCESS),
        detection=overrides.pop("detection", None) or DetectionConfig(),
        epochs=epochs, batch_size=16, learning_rate=3e-3, augment=False, device="cpu", **overrides)


@pytest.fixture(scope="session")
def toy_cohort(tmp_path_factory) -> Path:
    """Five healthy toy volumes with rotated/oblique direction matrices and anisotropic spacing."""
    folder = tmp_path_factory.mktemp("healthy")
    for i, direction in enumerate(COHORT_DIRECTIONS):
        sitk.WriteImage(toy(i, direction), str(folder / f"healthy_{i:03d}.nii.gz"))
    return folder


@pytest.fixture(scope="session")
def lesion_case(tmp_path_factory) -> Dict[str, object]:
    """A toy volume (rotated 30 degrees, anisotropic) with one hyperintense lesion, its ground truth and the
    same volume without the lesion; also written as files (images and masks in separate folders)."""
    rng = np.random.default_rng(99)
    healthy = synthetic.toy_volume(rng, spacing=TOY_SPACING, direction=rotation_z(30.0))
    lesioned, truth = synthetic.insert_lesion(healthy, organ_mask(healthy), "hyper", rng)
    root = tmp_path_factory.mktemp("lesioned")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    (root / "controls").mkdir()
    image_path = root / "images" / "case_000.nii.gz"
    mask_path = root / "masks" / "case_000_mask.nii.gz"
    healthy_path = root / "controls" / "control_000.nii.gz"
    sitk.WriteImage(lesioned, str(image_path))
    sitk.WriteImage(truth, str(mask_path))
    sitk.WriteImage(healthy, str(healthy_path))
    return {"image": lesioned, "truth": truth, "healthy": healthy, "image_path": image_path,
            "mask_path": mask_path, "healthy_path": healthy_path, "root": root}


@pytest.fixture(scope="session")
def dae_model_path(toy_cohort, tmp_path_factory) -> Path:
    """A tiny 2D denoising AE trained for a few epochs on the toy cohort (calibrated)."""
    from MedAutoencoderLib.api import train_model

    out = tmp_path_factory.mktemp("models") / "dae.pt"
    return train_model(tiny_train_config([toy_cohort], out, "dae", epochs=6))


@pytest.fixture(scope="session")
def ae_model_path(toy_cohort, tmp_path_factory) -> Path:
    """A tiny 2D undercomplete AE, trained for two epochs (resumable)."""
    from MedAutoencoderLib.api import train_model

    out = tmp_path_factory.mktemp("models") / "ae.pt"
    return train_model(tiny_train_config([toy_cohort], out, "ae", epochs=2))


@pytest.fixture(scope="session")
def dae_model(dae_model_path):
    from MedAutoencoderLib.api import load_model

    return load_model(dae_model_path, device="cpu")


@pytest.fixture(scope="session")
def vae_model_path(toy_cohort, tmp_path_factory) -> Path:
    """A tiny 2D VAE (two levels, 4-channel code), trained for two epochs: enough to sample and encode."""
    from MedAutoencoderLib.api import train_model

    out = tmp_path_factory.mktemp("models") / "vae.pt"
    return train_model(TrainConfig(
        data=[str(toy_cohort)], out=str(out), model=ModelConfig(name="vae", channels=(8, 16), latent_channels=4),
        preprocess=PreprocessConfig(spacing=(1.5,) * 3, size=(32, 32, 32)), epochs=2, augment=False, device="cpu"))


#: Session fixtures that train a model: a test that needs one trains (once per session) and is slow.
TRAINING_FIXTURES = frozenset({"dae_model_path", "ae_model_path", "vae_model_path", "aae_model_path",
                               "tiny_model_path"})


def pytest_collection_modifyitems(items):
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

"""The model grid chosen from the training data (dataset fingerprint), on small real files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import brain_scans, oblique_direction
from MedAutoencoderLib.data import synthetic
from MedAutoencoderLib.data.template import load_template
from MedAutoencoderLib.config import ModelConfig, PreprocessConfig
from MedAutoencoderLib.io import find_volumes, read_image
from MedAutoencoderLib.preprocessing.fingerprint import fingerprint_cohort, fingerprint_volume, plan_preprocessing

PHANTOM_SHAPE, PHANTOM_SPACING = (40, 48, 44), (0.9, 1.1, 2.5)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    """Six small phantom volumes, 40 x 48 x 44 voxels of 0.9 x 1.1 x 2.5 mm, on an oblique grid (the case of
    issue 24 that a brain-sized default grid refused)."""
    folder = tmp_path_factory.mktemp("phantoms")
    for i in range(6):
        image = synthetic.toy_volume(np.random.default_rng(100 + i), shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING,
                                     direction=oblique_direction())
        sitk.WriteImage(image, str(folder / f"phantom_{i}.nii.gz"))
    return folder


def test_phantom_cohort_gets_its_own_spacing_and_a_grid_that_holds_it(phantoms):
    fingerprint = fingerprint_cohort(find_volumes([phantoms]))
    assert fingerprint.median_spacing == pytest.approx(PHANTOM_SPACING)  # 25 and 15 degrees: still closest axes
    assert not fingerprint.head_sized and fingerprint.background_darkest
    plan = plan_preprocessing(fingerprint, ModelConfig(name="ae"), PreprocessConfig())
    assert plan.preprocess.spacing == pytest.approx(PHANTOM_SPACING)
    view = np.array(plan.preprocess.size) * np.array(plan.preprocess.spacing)
    assert np.all(view >= np.array(fingerprint.largest_extent))  # the whole foreground fits
    assert np.all(view <= np.array(fingerprint.largest_extent) * 1.6 + 30)  # and is not lost in a large grid
    assert all(s % 16 == 0 for s in plan.preprocess.size[:2])  # four levels of the ae halve x and y
    assert plan.preprocess.normalization == "percentile"
    assert plan.chosen == ("spacing", "size", "normalization")
    record = plan.record()
    assert record["fingerprint"]["median_spacing"] == pytest.approx(list(PHANTOM_SPACING))
    json.dumps(record)  # plain data, as the model file needs


def test_explicit_options_win_and_the_plan_fills_in_the_rest(phantoms):
    fingerprint = fingerprint_cohort(find_volumes([phantoms]))
    model = ModelConfig(name="ae", channels=(8, 16))  # two levels: x and y multiples of 4
    at_spacing = plan_preprocessing(fingerprint, model, PreprocessConfig(spacing=(2.0, 2.0, 2.0)),
                                    choose=("size", "normalization"))
    assert at_spacing.preprocess.spacing == (2.0, 2.0, 2.0)
    assert np.all(np.array(at_spacing.preprocess.size) * 2.0 >= np.array(fingerprint.largest_extent))
    assert all(s % 4 == 0 for s in at_spacing.preprocess.size[:2])
    in_size = plan_preprocessing(fingerprint, model, PreprocessConfig(size=(32, 32, 32), normalization="zscore"),
                                 choose=("spacing",))
    assert in_size.preprocess.size == (32, 32, 32) and in_size.preprocess.normalization == "zscore"
    assert np.all(np.array(in_size.preprocess.spacing) * 32 >= np.array(fingerprint.largest_extent))
    nothing = plan_preprocessing(fingerprint, model, PreprocessConfig(spacing=(3.0,) * 3, size=(16, 16, 16)),
                                 choose=())
    assert nothing.preprocess == PreprocessConfig(spacing=(3.0,) * 3, size=(16, 16, 16))


def test_training_plans_only_what_is_not_given():
    from MedAutoencoderLib.config import TrainConfig

    assert TrainConfig(data=["a"]).preprocessing_to_plan() == ("spacing", "size", "normalization")
    zscored = TrainConfig(data=["a"], preprocess=PreprocessConfig(normalization="zscore"))
    assert zscored.preprocessing_to_plan() == ("spacing", "size")
    for given in (TrainConfig(data=["a"], preprocess=PreprocessConfig(size=(64, 64, 64))),
                  TrainConfig(data=["a"], preprocess=PreprocessConfig(spacing=(1.0, 1.0, 1.0))),
                  TrainConfig(data=["a"], grid_from_data=False), TrainConfig(data=["a"], resume="m.pt")):
        assert given.preprocessing_to_plan() == ()


def test_a_3d_model_gets_a_patch_that_fits_the_planned_grid(phantoms):
    plan = plan_preprocessing(fingerprint_cohort(find_volumes([phantoms])), ModelConfig(name="ae", spatial_dims=3),
                              PreprocessConfig())
    assert all(p <= s and p % 16 == 0 for p, s in zip(plan.model.patch_size, plan.preprocess.size))


def test_brain_cohort_gets_the_grid_of_the_bundled_model(tmp_path):
    folder = brain_scans(tmp_path / "brains", "ab", ".nii.gz")  # the MNI template's brain at 2 mm
    fingerprint = fingerprint_cohort(find_volumes([folder]))
    assert fingerprint.head_sized
    plan = plan_preprocessing(fingerprint, ModelConfig(), PreprocessConfig(spacing=(9.0,) * 3, size=(8, 8, 8)),
                              choose=("spacing", "size", "normalization"))
    assert plan.preprocess.spacing == (1.5, 1.5, 1.5) and plan.preprocess.size == (128, 128, 112)
    assert plan.preprocess.normalization == "percentile" and "brain" in plan.reason


def test_a_head_with_skull_on_an_oblique_grid_is_head_sized():
    head = synthetic.make_healthy_subject(load_template(), np.random.default_rng(5))
    assert fingerprint_cohort_of([head]).head_sized


def fingerprint_cohort_of(images):
    from MedAutoencoderLib.preprocessing.fingerprint import CohortFingerprint

    return CohortFingerprint([fingerprint_volume(image, f"image {i}") for i, image in enumerate(images)])


def test_data_normalised_to_zero_mean_gets_zscore():
    image = synthetic.toy_volume(np.random.default_rng(3), shape=(40, 40, 40))
    values = sitk.GetArrayFromImage(image)
    inside = values > 30
    zscored = np.where(inside, (values - values[inside].mean()) / values[inside].std(), 0.0).astype(np.float32)
    normalised = sitk.GetImageFromArray(zscored)
    normalised.CopyInformation(image)
    fingerprint = fingerprint_cohort_of([normalised])
    assert not fingerprint.background_darkest
    assert plan_preprocessing(fingerprint, ModelConfig(), PreprocessConfig()).preprocess.normalization == "zscore"
    assert fingerprint_cohort_of([image]).background_darkest


def test_a_volume_without_foreground_is_named():
    empty = sitk.Image([20, 20, 20], sitk.sitkFloat32)
    with pytest.raises(Exception, match="^blank: "):
        fingerprint_volume(empty, "blank")


@pytest.mark.slow
def test_phantoms_train_and_detect_with_no_grid_options(phantoms, tmp_path):
    model = tmp_path / "phantom.pt"

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "MedAutoencoderLib", *map(str, args)], capture_output=True,
                              text=True, timeout=600)

    trained = cli("train", "--data", phantoms, "--model", "ae", "--out", model, "--epochs", "1",
                  "--device", "cpu", "--no-augment")
    assert trained.returncode == 0, trained.stderr
    assert "model grid from the data" in trained.stderr and "0.9 x 1.1 x 2.5 mm" in trained.stderr
    payload = torch.load(model, map_location="cpu", weights_only=True)
    assert payload["preprocess"]["spacing"] == pytest.approx(list(PHANTOM_SPACING))
    assert payload["training"]["grid_plan"]["chosen"] == ["spacing", "size", "normalization"]
    info = cli("info", model)
    assert "chosen from the data: spacing, size, normalization" in info.stdout
    out = tmp_path / "out"
    detected = cli("detect", "--model", model, phantoms, "--output-dir", out)
    assert detected.returncode == 0, detected.stderr
    for path in find_volumes([phantoms]):
        source = read_image(path)
        stem = path.name[:-len(".nii.gz")]
        for kind in ("reconstruction", "anomaly_map", "anomaly_mask"):
            output = sitk.ReadImage(str(out / f"{stem}_{kind}.nii.gz"))
            assert output.GetSize() == source.GetSize() and output.GetSpacing() == source.GetSpacing()
            # NIfTI stores the direction as a float32 quaternion: written again, it reads back within 1e-8
            assert np.allclose(output.GetOrigin(), source.GetOrigin(), atol=1e-5)
            assert np.allclose(output.GetDirection(), source.GetDirection(), atol=1e-6)
        summary = json.loads((out / f"{stem}_summary.json").read_text())
        assert np.isfinite(summary["anomaly_score"])

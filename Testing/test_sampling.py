"""Images from the latent space of a tiny trained VAE: ``sample`` and ``interpolate`` (in-process ``cli.main``)."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedAutoencoderLib.analysis.generation import central_slice_code, sample_prior
from MedAutoencoderLib.api import load_model
from MedAutoencoderLib.cli.commands import main
from MedAutoencoderLib.config import DetectionConfig, ModelConfig, PreprocessConfig
from MedAutoencoderLib.io.checkpoint import ModelRecord, save_model
from MedAutoencoderLib.io.volumes import read_image
from MedAutoencoderLib.networks.autoencoders import build_network
from MedAutoencoderLib.networks.latent import decode_codes


def untrained_model_file(path, name: str):
    """A real model file of another type; refusals depend on the type, not on the weights."""
    config = ModelConfig(name=name, channels=(8, 16), latent_channels=4)
    record = ModelRecord(model=config, preprocess=PreprocessConfig(size=(32, 32, 32)), detection=DetectionConfig())
    return save_model(path, build_network(config), record)


@pytest.mark.slow
def test_sample_writes_a_stack_on_the_model_grid_and_a_picture(vae_model_path, tmp_path):
    out = tmp_path / "samples"
    assert main(["sample", "--model", str(vae_model_path), "--n", "6", "--output-dir", str(out), "--seed", "3",
                 "--device", "cpu"]) == 0
    stack = sitk.ReadImage(str(out / "samples.nii.gz"))
    assert stack.GetSize() == (32, 32, 6) and stack.GetSpacing() == (1.5, 1.5, 1.5)
    slices = sitk.GetArrayFromImage(stack)
    assert np.isfinite(slices).all() and slices.std() > 0
    assert not np.allclose(slices[0], slices[1])  # different draws decode differently
    assert sitk.ReadImage(str(out / "samples.png")).GetSize() == (6 * 32, 32)

    model = load_model(vae_model_path, device="cpu")
    np.testing.assert_allclose(sample_prior(model, 6, seed=3), slices, atol=1e-5)  # --seed reproduces
    assert not np.allclose(sample_prior(model, 6, seed=4), slices)
    assert main(["sample", "--model", str(vae_model_path), "--n", "2", "--output-dir", str(out)]) == 1  # exists


@pytest.mark.slow
def test_interpolation_runs_from_the_first_code_to_the_second(vae_model_path, toy_cohort, tmp_path):
    first, second = sorted(toy_cohort.glob("*.nii.gz"))[:2]
    out = tmp_path / "line"
    assert main(["interpolate", str(first), str(second), "--model", str(vae_model_path), "--steps", "5",
                 "--output-dir", str(out), "--device", "cpu"]) == 0
    steps = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "interpolation.nii.gz")))
    assert steps.shape == (5, 32, 32)
    assert sitk.ReadImage(str(out / "interpolation.png")).GetSize() == (5 * 32, 32)

    model = load_model(vae_model_path, device="cpu")
    ends = decode_codes(model, torch.cat([central_slice_code(model, read_image(p), str(p)) for p in (first, second)]))
    np.testing.assert_allclose(steps[0], ends[0], atol=1e-5)
    np.testing.assert_allclose(steps[-1], ends[1], atol=1e-5)
    assert not np.allclose(steps[0], steps[-1])


def test_sampling_refuses_a_non_vae_and_interpolation_a_unet(tmp_path, toy_cohort, capsys):
    ae = untrained_model_file(tmp_path / "ae.pt", "ae")
    assert main(["sample", "--model", str(ae), "--output-dir", str(tmp_path / "s"), "--device", "cpu"]) == 1
    assert "sampling needs a VAE" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()

    dae = untrained_model_file(tmp_path / "dae.pt", "dae")
    first, second = sorted(toy_cohort.glob("*.nii.gz"))[:2]
    assert main(["interpolate", str(first), str(second), "--model", str(dae), "--output-dir", str(tmp_path / "i"),
                 "--device", "cpu"]) == 1
    assert "needs a model with a decoder" in capsys.readouterr().err


def test_an_aae_interpolates_with_its_generators_decoder(tmp_path, toy_cohort):
    """An aae is the plain AE with a critic: it was refused as "a aae U-Net"."""
    aae = untrained_model_file(tmp_path / "aae.pt", "aae")
    first, second = sorted(toy_cohort.glob("*.nii.gz"))[:2]
    assert main(["interpolate", str(first), str(second), "--model", str(aae), "--steps", "3", "--output-dir",
                 str(tmp_path / "i"), "--device", "cpu"]) == 0
    assert sitk.ReadImage(str(tmp_path / "i" / "interpolation.nii.gz")).GetSize() == (32, 32, 3)


def test_more_slices_than_a_nifti_holds_and_a_folder_for_a_volume_are_refused_before_any_work(
        vae_model_path, toy_cohort, tmp_path, capsys):
    """NIfTI's 32767-slice limit failed in ITK's writer after all the decoding; a folder of volumes given for one
    volume was said to hold "no volume files"."""
    assert main(["sample", "--model", str(vae_model_path), "--n", "40000", "--output-dir", str(tmp_path / "s"),
                 "--device", "cpu"]) == 1
    assert "40000 samples do not fit one NIfTI volume (at most 32767 slices)" in capsys.readouterr().err
    first = sorted(toy_cohort.glob("*.nii.gz"))[0]
    assert main(["interpolate", str(first), str(toy_cohort), "--model", str(vae_model_path), "--output-dir",
                 str(tmp_path / "i"), "--device", "cpu"]) == 1
    assert f"{toy_cohort}: is a folder of 5 volume file(s), not one volume" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() and not (tmp_path / "i").exists()

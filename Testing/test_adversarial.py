"""The adversarial autoencoder: its discriminator, GAN-style training on toy data, detection and the
discriminator's anomaly score."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import tiny_train_config

from MedAutoencoderLib.api import load_model, run_detection
from MedAutoencoderLib.config import ModelConfig
from MedAutoencoderLib.errors import ConfigurationError
from MedAutoencoderLib.io.checkpoint import read_model_file
from MedAutoencoderLib.networks.adversarial import discriminator_scores
from MedAutoencoderLib.networks.autoencoders import build_network, generator_and_critic
from MedAutoencoderLib.networks.losses import discriminator_hinge_loss, generator_adversarial_loss

EPOCHS = 6


def aae_config(**kw) -> ModelConfig:
    return ModelConfig(name="aae", channels=(8, 16, 32), latent_channels=8, **kw)


def test_discriminator_is_spectrally_normalised_and_judges_patches():
    network = build_network(aae_config())
    autoencoder, discriminator = generator_and_critic(network)
    convolutions = [m for m in discriminator.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in convolutions)
    x = torch.rand(2, 1, 32, 48)
    assert discriminator(x).shape == (2, 1, 4, 6)
    assert network(x)["reconstruction"].shape == x.shape and autoencoder is network.autoencoder
    assert generator_and_critic(build_network(ModelConfig(name="ae")))[1] is None


def test_gan_losses_reward_the_right_side():
    sure, unsure = torch.full((4, 1), 3.0), torch.full((4, 1), -3.0)
    assert float(discriminator_hinge_loss(sure, unsure)) == 0.0  # beyond the margin: nothing left to learn
    assert float(discriminator_hinge_loss(unsure, sure)) == pytest.approx(8.0)
    assert float(generator_adversarial_loss(sure)) < float(generator_adversarial_loss(unsure))


@pytest.fixture(scope="module")
def aae_model_path(toy_cohort, tmp_path_factory):
    from MedAutoencoderLib.api import train_model

    out = tmp_path_factory.mktemp("models") / "aae.pt"
    return train_model(tiny_train_config([toy_cohort], out, model=aae_config(), epochs=EPOCHS))


@pytest.mark.slow
def test_aae_trains_without_diverging(aae_model_path):
    payload = read_model_file(aae_model_path)
    history = payload["training"]["history"]
    assert len(history) == EPOCHS
    for name in ("train_loss", "critic_loss", "val_loss"):
        assert np.isfinite([h[name] for h in history]).all(), history
    validation = [h["val_loss"] for h in history]  # the pure reconstruction loss on held-out volumes
    assert min(validation[-2:]) < 0.7 * validation[0], validation
    assert all(0.0 <= h["critic_loss"] < 4.0 for h in history), history  # hinge: 2 is chance, 0 a perfect critic
    assert "critic_optimizer" in payload["training_state"]
    assert any(k.startswith("discriminator.") for k in payload["state_dict"])


def test_aae_detects_on_the_input_grid_with_a_discriminator_score(aae_model_path, lesion_case):
    model = load_model(aae_model_path, device="cpu")
    image = lesion_case["image"]
    result = run_detection(image, model).result
    for output in (result.reconstruction, result.anomaly_map, result.anomaly_mask):
        assert (output.GetSize(), output.GetSpacing(), output.GetOrigin(), output.GetDirection()) == \
            (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    assert np.isfinite(sitk.GetArrayFromImage(result.anomaly_map)).all()
    scores = discriminator_scores(image, model)
    assert len(scores.slices) == len(scores.slice_scores) > 0 and np.isfinite(scores.slice_scores).all()
    assert scores.volume_score == pytest.approx(float(scores.slice_scores.max()))


def test_discriminator_score_needs_an_adversarial_model(ae_model_path, lesion_case):
    with pytest.raises(ConfigurationError):
        discriminator_scores(lesion_case["image"], load_model(ae_model_path, device="cpu"))

"""The discriminator of an adversarial autoencoder (``aae``) as a second anomaly signal.

The discriminator was trained to tell healthy slices from reconstructions; on a new scan its realness logits
say how much each slice (or 3D volume) looks like the healthy training data. This module turns them into an
abnormality score, higher = less like healthy anatomy, per slice and per volume. The main anomaly map stays
the reconstruction residual; this score is an extra, coarser piece of evidence.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from MedAutoencoderLib.errors import ConfigurationError
from MedAutoencoderLib.io.loaded_model import LoadedModel
from MedAutoencoderLib.networks.autoencoders import AdversarialAutoencoder
from MedAutoencoderLib.preprocessing.prepare import PreparedVolume, prepare_volume
from MedAutoencoderLib.runtime.device import autocast
from MedAutoencoderLib.training.samples import training_slices


@dataclass
class DiscriminatorScores:
    """Abnormality by the discriminator: minus its mean realness logit, per slice and for the volume."""

    slices: np.ndarray  # (n,) axial slice indices on the model grid (2D models; empty for 3D)
    slice_scores: np.ndarray  # (n,) one score per slice in ``slices``
    volume_score: float  # 2D: the highest slice score (a lesion touches few slices); 3D: the whole volume's


def _discriminator(model: LoadedModel) -> torch.nn.Module:
    if not isinstance(model.network, AdversarialAutoencoder):
        raise ConfigurationError(f"{model.path}: a {model.record.model.name} model has no discriminator; "
                                 "discriminator scores need an 'aae' model")
    return model.network.discriminator.eval()


def _abnormality(discriminator: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    """Minus the mean realness logit of each image in the batch."""
    with autocast(images.device):
        logits = discriminator(images).float()
    return (-logits.flatten(start_dim=1).mean(dim=1)).cpu().numpy()


def prepared_discriminator_scores(model: LoadedModel, prepared: PreparedVolume) -> DiscriminatorScores:
    """Scores of a volume already on the model grid; 2D models judge the slices they were trained on."""
    discriminator = _discriminator(model)
    image = torch.from_numpy(prepared.image).to(model.device)
    with torch.inference_mode():
        if model.record.model.spatial_dims == 3:
            score = float(_abnormality(discriminator, image[None, None])[0])
            return DiscriminatorScores(slices=np.zeros(0, int), slice_scores=np.zeros(0), volume_score=score)
        slices = training_slices(prepared.foreground, model.record.preprocess)
        batch_size = model.record.detection.batch_size
        scores = np.concatenate([_abnormality(discriminator, image[slices[i:i + batch_size], None])
                                 for i in range(0, len(slices), batch_size)] or [np.zeros(0)])
    return DiscriminatorScores(slices=slices, slice_scores=scores,
                               volume_score=float(scores.max()) if len(scores) else float("nan"))


def discriminator_scores(image: sitk.Image, model: LoadedModel, name: str = "input") -> DiscriminatorScores:
    """The discriminator's abnormality scores of ``image``, prepared exactly as for detection."""
    return prepared_discriminator_scores(model, prepare_volume(image, model.record.preprocess, name=name))

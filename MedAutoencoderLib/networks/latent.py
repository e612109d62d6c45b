"""The latent code of a trained model: encoding slices, the code's shape, decoding codes back to images.

Feature extraction, sampling and interpolation all go through these helpers so that they encode exactly what
detection reconstructs: slices of the prepared (model-grid, normalised) volume, in batches, in eval mode. The
VAE's ``encode`` returns its mean as ``code``, so a VAE is represented by ``mu`` everywhere.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
from torch import nn

from MedAutoencoderLib.errors import ConfigurationError
from MedAutoencoderLib.io.loaded_model import LoadedModel
from MedAutoencoderLib.networks.losses import reconstruction_from_output


def require_2d(model: LoadedModel, task: str) -> None:
    """Slice-wise tasks need a slice-wise (2D) model."""
    if model.record.model.spatial_dims != 2:
        raise ConfigurationError(f"{model.path}: {task} needs a 2D (slice-wise) model; this one is 3D patch-wise")


def require_decoder(model: LoadedModel, task: str) -> nn.Module:
    """The network, if it can decode a code on its own (ae, sparse, vae, aae; the DAE's U-Net needs its skips)."""
    require_2d(model, task)
    if not hasattr(model.network, "decode"):
        raise ConfigurationError(f"{model.path}: {task} needs a model with a decoder for codes (ae, sparse, vae "
                                 f"or aae); a {model.record.model.name} U-Net decodes only with its skip "
                                 "connections")
    return model.network


def encode_slices(model: LoadedModel, slices: np.ndarray) -> torch.Tensor:
    """Codes ``(n, channels, h, w)`` of ``(n, y, x)`` normalised slices, on the CPU, in batches."""
    batch_size = model.record.detection.batch_size
    network = model.network.eval()
    codes = []
    with torch.inference_mode():
        for start in range(0, len(slices), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(slices[start:start + batch_size][:, None]))
            codes.append(network.encode(batch.to(model.device))["code"].float().cpu())
    return torch.cat(codes)


def code_shape(model: LoadedModel) -> Tuple[int, ...]:
    """Shape of one slice's code (channels, h, w), found by encoding an empty slice of the model grid."""
    size_x, size_y, _ = model.record.preprocess.size
    return tuple(encode_slices(model, np.zeros((1, size_y, size_x), dtype=np.float32)).shape[1:])


def decode_codes(model: LoadedModel, codes: torch.Tensor) -> np.ndarray:
    """Images ``(n, y, x)`` (normalised intensities) decoded from codes ``(n, channels, h, w)``."""
    network = require_decoder(model, "decoding codes")
    batch_size = model.record.detection.batch_size
    images = []
    with torch.inference_mode():
        for start in range(0, len(codes), batch_size):
            output = network.decode(codes[start:start + batch_size].to(model.device))
            images.append(reconstruction_from_output(output.float(), model.record.model)[:, 0].cpu())
    return torch.cat(images).numpy()

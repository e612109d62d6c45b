"""Running a network over a prepared volume: slice batches in 2D, MONAI sliding windows in 3D."""
from __future__ import annotations

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from MedAutoencoderLib.config import ModelConfig
from MedAutoencoderLib.networks.losses import reconstruction_from_output
from MedAutoencoderLib.preprocessing.prepare import PreparedVolume
from MedAutoencoderLib.runtime.device import explain_out_of_memory, inference_autocast

_CPU_SLICES_PER_BATCH = 8
#: How 3D models tile a volume (MONAI ``sliding_window_inference``); an export's sidecar states them too.
WINDOW_OVERLAP = 0.25
WINDOW_BLEND = "gaussian"


def foreground_slices(foreground: np.ndarray) -> np.ndarray:
    """Indices of axial slices that hold foreground; the others need no network pass."""
    return np.flatnonzero(foreground.reshape(foreground.shape[0], -1).any(axis=1))


def _reconstruct_slices(network: nn.Module, volume: np.ndarray, slices: np.ndarray, config: ModelConfig,
                        batch_size: int, device: torch.device, precision: str) -> np.ndarray:
    result = np.zeros_like(volume)
    for start in range(0, len(slices), batch_size):
        chosen = slices[start:start + batch_size]
        batch = torch.from_numpy(volume[chosen][:, None]).to(device).contiguous(memory_format=torch.channels_last)
        with inference_autocast(device, precision):
            output = network(batch)["reconstruction"]
        result[chosen] = reconstruction_from_output(output.float(), config)[:, 0].cpu().numpy()
    return result


def _reconstruct_patches(network: nn.Module, volume: np.ndarray, config: ModelConfig, batch_size: int,
                         device: torch.device, precision: str) -> np.ndarray:
    inputs = torch.from_numpy(volume[None, None]).to(device)
    roi_zyx = tuple(reversed(config.patch_size))

    def predictor(patch: torch.Tensor) -> torch.Tensor:
        return reconstruction_from_output(network(patch)["reconstruction"].float(), config)

    with inference_autocast(device, precision):
        output = sliding_window_inference(inputs, roi_zyx, batch_size, predictor, overlap=WINDOW_OVERLAP,
                                          mode=WINDOW_BLEND)
    return output[0, 0].float().cpu().numpy()


def reconstruct(network: nn.Module, prepared: PreparedVolume, config: ModelConfig, batch_size: int,
                device: torch.device, precision: str = "auto") -> np.ndarray:
    """The network's reconstruction of ``prepared.image`` on the model grid ((z, y, x) float32), in
    ``precision`` (see :func:`~MedAutoencoderLib.runtime.device.inference_autocast`)."""
    network.eval()
    with torch.inference_mode(), explain_out_of_memory("reconstruction", batch_size):
        if config.spatial_dims == 2:
            # channels-last runs the convolutions of slice batches about twice as fast on CPUs (oneDNN) and
            # suits tensor cores on GPUs; it changes memory layout only, not results
            network.to(memory_format=torch.channels_last)
            slices = foreground_slices(prepared.foreground)
            if device.type == "cpu":  # small batches keep the activations in cache: 8 slices run 1.4x faster than 32
                batch_size = min(batch_size, _CPU_SLICES_PER_BATCH)
            return _reconstruct_slices(network, prepared.image, slices, config, batch_size, device, precision)
        return _reconstruct_patches(network, prepared.image, config, batch_size, device, precision)


"""Segmentation networks made from the autoencoders, and the autoencoder weights they start from.

- ``dae`` (MONAI ``BasicUNet``): the U-Net whole, its last 1x1 convolution (one output, the reconstruction)
  replaced by one with an output per class; every other weight comes from the autoencoder.
- ``ae``, ``sparse``, ``vae``, ``aae`` (MONAI ``AutoEncoder`` encoder and decoder): the encoder, with a decoder of
  the same shape that ends in an output per class; the narrow code layer is left out (it exists to stop the
  autoencoder copying its input, which a segmentation does not need), so only the encoder's weights are taken.

Every network maps ``(B, 1, *spatial)`` to class logits ``(B, n_classes, *spatial)``.
"""
from __future__ import annotations

from typing import Dict, List

import torch
from monai.networks.nets import AutoEncoder
from torch import nn

from MedAutoencoderLib.config import ModelConfig
from MedAutoencoderLib.errors import ModelFileError
from MedAutoencoderLib.networks.autoencoders import _NORM, DenoisingUNet


class SegmentationUNet(DenoisingUNet):
    """The DAE's U-Net with a head of ``n_classes`` outputs (the attribute ``unet`` keeps the DAE's weight names)."""

    def __init__(self, config: ModelConfig, n_classes: int) -> None:
        super().__init__(config, out_channels=n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_unet(x)


class EncoderSegmenter(nn.Module):
    """An autoencoder's encoder (attribute ``encoder``, the AE's weight names) and a decoder to class logits."""

    def __init__(self, config: ModelConfig, n_classes: int) -> None:
        super().__init__()
        channels = list(config.channels)
        backbone = AutoEncoder(
            spatial_dims=config.spatial_dims, in_channels=1, out_channels=n_classes, channels=channels,
            strides=[2] * len(channels), num_res_units=1, norm=_NORM, act="PRELU",
        )
        self.encoder = backbone.encode
        self.decoder = backbone.decode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def build_segmentation_network(config: ModelConfig, n_classes: int) -> nn.Module:
    """The segmentation network for an autoencoder of architecture ``config``.

    Args:
        config: the autoencoder's architecture.
        n_classes: outputs (the background and one per label value).

    Returns:
        A :class:`SegmentationUNet` for a ``dae``, else an :class:`EncoderSegmenter`.
    """
    config.validate()
    return SegmentationUNet(config, n_classes) if config.name == "dae" else EncoderSegmenter(config, n_classes)


def pretrained_weights(network: nn.Module, autoencoder_state: Dict[str, torch.Tensor],
                       config: ModelConfig) -> Dict[str, torch.Tensor]:
    """The weights of ``network`` that the autoencoder provides, under ``network``'s names: the whole U-Net but
    its last layer (``dae``), or the encoder (the other types; an ``aae``'s lies under ``autoencoder.``).

    Args:
        network: from :func:`build_segmentation_network` for ``config``.
        autoencoder_state: the autoencoder's ``state_dict``.
        config: the autoencoder's architecture.

    Returns:
        Name -> tensor, for ``network.load_state_dict(..., strict=False)``.
    """
    own = network.state_dict()
    if config.name == "dae":
        wanted = {name: name for name in own if not name.startswith("unet.final_conv.")}
    else:
        prefix = "autoencoder." if config.name == "aae" else ""
        wanted = {name: prefix + name for name in own if name.startswith("encoder.")}
    return {name: autoencoder_state[source] for name, source in wanted.items() if source in autoencoder_state}


def load_pretrained(network: nn.Module, autoencoder_state: Dict[str, torch.Tensor], config: ModelConfig,
                    source: str) -> List[str]:
    """Copy the autoencoder's weights into ``network`` (see :func:`pretrained_weights`).

    Args:
        network: the segmentation network.
        autoencoder_state: the autoencoder's ``state_dict``.
        config: the autoencoder's architecture.
        source: the autoencoder's file, for messages.

    Returns:
        The names of the tensors copied.

    Raises:
        ModelFileError: the file lacks weights the architecture it records must have, or their shapes differ.
    """
    weights = pretrained_weights(network, autoencoder_state, config)
    own = network.state_dict()
    if config.name == "dae":
        expected = [n for n in own if not n.startswith("unet.final_conv.")]
    else:
        expected = [n for n in own if n.startswith("encoder.")]
    missing = [n for n in expected if n not in weights]
    wrong = [n for n, t in weights.items() if tuple(t.shape) != tuple(own[n].shape)]
    if missing or wrong:
        raise ModelFileError(f"{source}: its weights do not fit the {config.name} architecture it records "
                             f"({len(missing)} missing, {len(wrong)} of another shape)")
    network.load_state_dict(weights, strict=False)
    return sorted(weights)

"""The autoencoder family, built from MONAI blocks, behind a registry by name.

Every network maps ``(B, 1, *spatial)`` to a dict with ``reconstruction`` and ``code`` (and ``mu``/``logvar``
for the VAE), so that training, detection and feature extraction treat them alike:

- ``ae``: undercomplete convolutional AE; MONAI ``AutoEncoder`` encoder/decoder with a narrow 1x1-conv
  bottleneck of ``latent_channels`` (a small code avoids the identity shortcut, Cai et al. 2024).
- ``sparse``: the same AE; the training loss adds an L1 or KL sparsity penalty on the code.
- ``vae``: the AE with mean/log-variance heads and reparameterisation; inference decodes the mean. (MONAI's
  ``VarAutoEncoder`` is not used: in 1.5.x it samples in eval mode, MONAI issue 8413, and its dense bottleneck
  is large in 3D.)
- ``dae``: MONAI ``BasicUNet`` trained to remove (coarse) noise; the strongest simple AE for anomaly detection
  (Kascenas et al. 2022). Its "code" is the deepest encoder feature map.
- ``aae``: the AE, trained GAN-style against a small spectrally normalised PatchGAN discriminator that judges
  real slices against reconstructions (sharper reconstructions than the blur that pixel losses favour); the
  discriminator is kept in the model and its verdict on an input is an extra anomaly signal.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
from monai.networks.blocks import Convolution
from monai.networks.blocks.activation import Swish
from monai.networks.layers import Conv
from monai.networks.nets import AutoEncoder, BasicUNet
from monai.networks.utils import pixelshuffle, pixelunshuffle
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from MedAutoencoderLib.config import ModelConfig

_NORM = ("instance", {"affine": True})


class BottleneckAutoencoder(nn.Module):
    """Convolutional encoder -> ``latent_channels``-wide spatial code -> decoder; optionally variational."""

    def __init__(self, config: ModelConfig, variational: bool = False) -> None:
        super().__init__()
        dims = config.spatial_dims
        channels = list(config.channels)
        backbone = AutoEncoder(
            spatial_dims=dims, in_channels=1, out_channels=1, channels=channels, strides=[2] * len(channels),
            num_res_units=1, norm=_NORM, act="PRELU",
        )
        self.variational = variational
        self.encoder = backbone.encode
        code_width = config.latent_channels * (2 if variational else 1)
        self.to_code = Conv[Conv.CONV, dims](channels[-1], code_width, kernel_size=1)
        self.from_code = Convolution(dims, config.latent_channels, channels[-1], kernel_size=1, norm=_NORM, act="PRELU")
        self.decoder = backbone.decode

    def encode(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        code = self.to_code(self.encoder(x))
        if not self.variational:
            return {"code": code}
        mu, logvar = torch.chunk(code, 2, dim=1)
        return {"code": mu, "mu": mu, "logvar": logvar.clamp(-30.0, 20.0)}

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.from_code(code))

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        encoded = self.encode(x)
        latent = encoded["code"]
        if self.variational and self.training:
            latent = encoded["mu"] + torch.randn_like(encoded["mu"]) * torch.exp(0.5 * encoded["logvar"])
        return {"reconstruction": self.decode(latent), **encoded}


def _use_fused_swish(module: nn.Module) -> None:
    """Replace MONAI's ``Swish`` (``x * sigmoid(x)`` in two kernels) by PyTorch's fused ``SiLU``, in place: the
    same function without parameters, so weights are unaffected, and one pass over memory, without a new tensor,
    instead of three."""
    for name, child in module.named_children():
        if isinstance(child, Swish):
            setattr(module, name, nn.SiLU(inplace=True))  # on the fresh output of a norm: gradients unchanged
        else:
            _use_fused_swish(child)


def group_count(base_channels: int) -> int:
    """Groups of the DAE's group norm: 8 as in Kascenas et al. (2022), or the largest divisor of the first level's
    width below that (every level's width is a multiple of it), so that any width builds (12 -> 6, 10 -> 5)."""
    return max(g for g in range(1, 9) if base_channels % g == 0)


class DenoisingUNet(nn.Module):
    """MONAI ``BasicUNet`` with group norm and swish, as in Kascenas et al. (2022), scaled by ``channels``.

    With ``config.unshuffle`` = f > 1 the U-Net runs at 1/f of the resolution: each f x f (x f) block of voxels is
    folded into channels before it and unfolded after it (MONAI's ``pixelunshuffle``/``pixelshuffle``), which takes
    the costly full-resolution level away at equal width and parameters (about 3x faster on CPUs in 2D).
    """

    def __init__(self, config: ModelConfig, out_channels: int = 1) -> None:
        super().__init__()
        base = config.channels[0]
        features = (base, base, 2 * base, 4 * base, 8 * base, base)
        self.spatial_dims, self.factor = config.spatial_dims, config.unshuffle
        folded = self.factor ** self.spatial_dims
        self.unet = BasicUNet(
            spatial_dims=config.spatial_dims, in_channels=folded, out_channels=out_channels * folded,
            features=features, act="swish", norm=("group", {"num_groups": group_count(base)}),
        )
        _use_fused_swish(self.unet)

    def _fold(self, x: torch.Tensor) -> torch.Tensor:
        return pixelunshuffle(x, self.spatial_dims, self.factor) if self.factor > 1 else x

    def run_unet(self, x: torch.Tensor) -> torch.Tensor:
        """The U-Net's output at the input's resolution."""
        folded = self._fold(x)
        self._pad_only_where_needed(folded)
        y = self.unet(folded)
        return pixelshuffle(y, self.spatial_dims, self.factor) if self.factor > 1 else y

    def _pad_only_where_needed(self, x: torch.Tensor) -> None:
        """MONAI's ``UpCat`` pads each upsampled map to its skip connection's size, copying it even when they match;
        they differ only where a size is not a multiple of the four poolings' 16 (then the padding stays on)."""
        needed = any(size % 16 for size in x.shape[2:])
        for up in (self.unet.upcat_4, self.unet.upcat_3, self.unet.upcat_2, self.unet.upcat_1):
            up.is_pad = needed

    def encode(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        u = self.unet
        return {"code": u.down_4(u.down_3(u.down_2(u.down_1(u.conv_0(self._fold(x))))))}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"reconstruction": self.run_unet(x)}


class Discriminator(nn.Module):
    """PatchGAN critic: strided MONAI convolutions (one per AE level) with leaky ReLU and spectral norm.

    Spectral norm on every convolution bounds the critic's Lipschitz constant, which keeps GAN training
    stable without normalisation layers (Miyato et al. 2018). The output is a map of realness logits, one
    per receptive field, so that the critic judges local texture rather than the whole slice at once.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        dims = config.spatial_dims
        widths = (1, *config.channels)
        blocks = [Convolution(dims, c_in, c_out, strides=2, kernel_size=3, norm=None,
                              act=("leakyrelu", {"negative_slope": 0.2})) for c_in, c_out in zip(widths, widths[1:])]
        self.layers = nn.Sequential(*blocks, Convolution(dims, widths[-1], 1, kernel_size=3, conv_only=True))
        for conv in [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]:
            spectral_norm(conv)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.layers(image)


class AdversarialAutoencoder(nn.Module):
    """The bottleneck AE (the generator) with the discriminator that judges its reconstructions.

    Called like any other network it is the AE alone, so that reconstruction, detection and features work
    unchanged; training reaches the two parts through :func:`generator_and_critic`.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.autoencoder = BottleneckAutoencoder(config)
        self.discriminator = Discriminator(config)

    def encode(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.autoencoder.encode(x)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """The generator's decoder (interpolation between codes; there is no prior to sample from)."""
        return self.autoencoder.decode(code)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.autoencoder(x)


def generator_and_critic(network: nn.Module) -> Tuple[nn.Module, Optional[nn.Module]]:
    """The part trained to reconstruct and, for adversarial models, the discriminator trained against it
    (each gets its own optimizer and its own DDP wrapper)."""
    if isinstance(network, AdversarialAutoencoder):
        return network.autoencoder, network.discriminator
    return network, None


NETWORKS: Dict[str, Callable[[ModelConfig], nn.Module]] = {
    "ae": lambda c: BottleneckAutoencoder(c),
    "sparse": lambda c: BottleneckAutoencoder(c),
    "vae": lambda c: BottleneckAutoencoder(c, variational=True),
    "dae": DenoisingUNet,
    "aae": AdversarialAutoencoder,
}


def build_network(config: ModelConfig) -> nn.Module:
    """The network named by ``config.name`` (validated first)."""
    config.validate()
    return NETWORKS[config.name](config)

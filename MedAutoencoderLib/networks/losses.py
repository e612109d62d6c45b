"""Training objectives: a reconstruction term plus the regulariser of each model type.

Reconstruction losses come from PyTorch (MSE, L1, BCE with logits) and MONAI (``SSIMLoss``). The KL term of the
VAE and the sparsity penalties are a few lines each and are written here because MONAI has no loss for a
spatial code.
The adversarial autoencoder adds the usual GAN pair: a hinge loss for the discriminator and the
non-saturating loss for the generator (both a line over PyTorch functions).
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn.functional as F
from monai.losses import SSIMLoss

from MedAutoencoderLib.config import ModelConfig


def reconstruction_from_output(output: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Network output as an image: BCE-trained networks emit logits."""
    return torch.sigmoid(output) if config.reconstruction_loss == "bce" else output


def _reconstruction_term(config: ModelConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if config.reconstruction_loss == "mse":
        return F.mse_loss
    if config.reconstruction_loss == "l1":
        return F.l1_loss
    if config.reconstruction_loss == "bce":
        return lambda out, target: F.binary_cross_entropy_with_logits(out, target.clamp(0.0, 1.0))
    ssim = SSIMLoss(spatial_dims=config.spatial_dims, data_range=1.5, win_size=7)
    return lambda out, target: ssim(out.float(), target.float())


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, 1)) summed over the code and averaged over the batch."""
    return 0.5 * torch.sum(mu.pow(2) + logvar.exp() - 1.0 - logvar) / mu.shape[0]


def sparsity_penalty(code: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """L1 on the code, or KL between a target activation rate and the mean sigmoid activation per unit."""
    if config.sparsity == "l1":
        return code.abs().mean()
    rho = torch.tensor(config.sparsity_target, device=code.device)
    rho_hat = torch.sigmoid(code).mean(dim=0).clamp(1e-6, 1 - 1e-6)
    return torch.sum(rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat)))


def discriminator_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the critic (Lim & Ye 2017; Miyato et al. 2018): no reward for being surer than a margin
    of 1, which stops a winning discriminator from driving its logits, and the generator's gradients, to
    extremes."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``-log sigmoid(D(fake))``: strong gradients while the critic still
    tells reconstructions apart, and never negative, so that the total loss stays a readable number."""
    return F.softplus(-fake_logits).mean()


class AutoencoderLoss:
    """Total loss of one model type; returns the parts too so that progress can show them."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.reconstruction = _reconstruction_term(config)

    def __call__(self, outputs: Dict[str, torch.Tensor], target: torch.Tensor) -> Dict[str, torch.Tensor]:
        parts = {"reconstruction": self.reconstruction(outputs["reconstruction"], target)}
        if self.config.name == "vae":
            parts["kl"] = self.config.kl_weight * kl_divergence(outputs["mu"], outputs["logvar"])
        elif self.config.name == "sparse":
            parts["sparsity"] = self.config.sparsity_weight * sparsity_penalty(outputs["code"], self.config)
        elif self.config.name == "aae" and "critic_logits" in outputs:  # the critic's verdict on the output
            parts["adversarial"] = self.config.adversarial_weight * generator_adversarial_loss(outputs["critic_logits"])
        parts["total"] = sum(parts.values())
        return parts

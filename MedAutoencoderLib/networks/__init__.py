"""Autoencoder networks, their losses, input corruption, latent codes and the AAE's discriminator.

Every name below is imported from its module when first used (:mod:`MedAutoencoderLib._lazy`).
"""
from __future__ import annotations

from MedAutoencoderLib._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "adversarial": ["DiscriminatorScores", "prepared_discriminator_scores", "discriminator_scores"],
    "autoencoders": ["BottleneckAutoencoder", "group_count", "DenoisingUNet", "Discriminator",
        "AdversarialAutoencoder", "generator_and_critic", "NETWORKS", "build_network"],
    "latent": ["require_2d", "require_decoder", "encode_slices", "code_shape", "decode_codes"],
    "losses": ["reconstruction_from_output", "kl_divergence", "sparsity_penalty", "discriminator_hinge_loss",
        "generator_adversarial_loss", "AutoencoderLoss"],
    "noise": ["coarse_noise", "corrupt"],
})

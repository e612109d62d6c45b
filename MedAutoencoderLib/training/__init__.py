"""Training a model: the trainer, training samples and distributed (DDP) training.

Every name below is imported from its module when first used (:mod:`MedAutoencoderLib._lazy`).
"""
from __future__ import annotations

from MedAutoencoderLib._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "distributed": ["DistributedContext", "context_from_environment", "training_device", "process_group",
        "leave_together", "parallel_network"],
    "samples": ["augmentation", "training_slices", "volumes_without_samples", "slice_samples", "volume_samples", "start_epoch",
        "make_loader"],
    "trainer": ["StopRequest", "TrainingState", "Critic", "seed_everything", "split_volumes",
        "unfinished_model_path", "Trainer"],
})

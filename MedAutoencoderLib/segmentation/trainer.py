"""Training a segmentation network from a trained autoencoder on a few labelled volumes.

The network and the preprocessing come from the autoencoder (:mod:`~MedAutoencoderLib.segmentation.networks`);
the loss is MONAI's ``DiceCELoss`` (softmax over the classes, Dice and cross-entropy summed); the optimiser Adam
with a cosine schedule over a fixed number of steps, each a batch of axial slices drawn at random (with
replacement) from the labelled volumes and augmented as the autoencoders' training is. There is no held-out
share: with one to a few labelled volumes every one is needed for training, and the budget is the step count.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.losses import DiceCELoss
from monai.transforms import Compose, EnsureTyped, Randomizable
from torch import nn
from torch.utils.data import RandomSampler

from MedAutoencoderLib.config import BRAIN_FOREGROUNDS, ModelConfig, PreprocessConfig, SegmentTrainConfig
from MedAutoencoderLib.errors import Cancelled, ConfigurationError
from MedAutoencoderLib.io.checkpoint import read_model_file, record_from_payload
from MedAutoencoderLib.io.loaded_model import DEFAULT_MODEL
from MedAutoencoderLib.io.volumes import require_new_file
from MedAutoencoderLib.runtime.device import configure_for_speed, explain_out_of_memory, resolve_device
from MedAutoencoderLib.runtime.progress import ProgressCallback, ProgressTracker
from MedAutoencoderLib.segmentation.data import LabelledVolume, assign_classes, pair_images_with_labels, \
    prepare_labelled
from MedAutoencoderLib.segmentation.labels import label_set
from MedAutoencoderLib.segmentation.model_file import SegmentationRecord, save_segmentation_model
from MedAutoencoderLib.segmentation.networks import build_segmentation_network, load_pretrained
from MedAutoencoderLib.training.samples import augmentation
from MedAutoencoderLib.training.trainer import seed_everything

StopRequest = Callable[[], bool]
_PROGRESS_EVERY_S = 5.0  # at most one progress event per this many seconds (and at the end)
_HISTORY_EVERY = 10  # steps between the loss values kept in the model file


@dataclasses.dataclass
class StartingPoint:
    """What a segmentation network starts from: an autoencoder's architecture, preprocessing and weights (none
    from scratch)."""

    model: ModelConfig
    preprocess: PreprocessConfig
    state_dict: Optional[Dict[str, torch.Tensor]] = None
    source: Optional[Path] = None
    library_version: Optional[str] = None
    contrasts: Optional[List[str]] = None


def starting_point(config: SegmentTrainConfig) -> StartingPoint:
    """The autoencoder ``config.init`` names (``"default"``: the bundled one), or the bundled model's architecture
    and grid without weights (from scratch), with ``config``'s preprocessing overrides applied.

    Args:
        config: the segmentation training's configuration.

    Returns:
        The starting point.

    Raises:
        ModelFileError: the autoencoder file cannot be used.
        ConfigurationError: a 3D autoencoder, or a grid the network's levels do not divide.
    """
    if config.from_scratch:
        start = StartingPoint(model=ModelConfig(), preprocess=PreprocessConfig(foreground="brain"))
    else:
        path = DEFAULT_MODEL if config.init.lower() == "default" else Path(config.init)
        payload = read_model_file(path)
        record = record_from_payload(payload, path)
        from MedAutoencoderLib.brain.contrast import model_contrasts

        foreground = "brain" if record.preprocess.foreground in BRAIN_FOREGROUNDS else record.preprocess.foreground
        start = StartingPoint(model=record.model, preprocess=dataclasses.replace(record.preprocess,
                                                                                 foreground=foreground),
                              state_dict=payload["state_dict"], source=path, library_version=record.library_version,
                              contrasts=model_contrasts(record.contrasts, record.preprocess.foreground)[0])
    if config.spacing is not None:
        start.preprocess.spacing = tuple(float(s) for s in config.spacing)
    if config.size is not None:
        start.preprocess.size = tuple(int(s) for s in config.size)
    if config.foreground is not None:
        start.preprocess.foreground = config.foreground
    start.preprocess.validate()
    if start.model.spatial_dims != 2:
        raise ConfigurationError(f"{start.source}: is a 3D autoencoder; segmentation is made from 2D (slice-wise) "
                                 "autoencoders")
    factor = start.model.downsampling_factor
    if any(s % factor for s in start.preprocess.size[:2]):
        raise ConfigurationError(f"grid size {tuple(start.preprocess.size[:2])} must be a multiple of {factor} for "
                                 f"{start.model.describe_levels()} (--size)")
    return start


def _loader(volumes: Sequence[LabelledVolume], preprocess: PreprocessConfig, steps: int, batch_size: int,
            augment: bool, seed: int) -> DataLoader:
    """``steps`` batches of augmented axial slices drawn with replacement: ``{"image", "mask"}`` (the mask holds
    the class indices; augmentation resamples it by nearest neighbour)."""
    samples = [{"image": v.prepared.image[z][None], "mask": v.classes[z][None].astype(np.float32)}
               for v in volumes for z in v.slices(preprocess)]
    pipeline = Compose([*augmentation(augment, 2), EnsureTyped(keys=("image", "mask"), track_meta=False)])
    for transform in pipeline.transforms:
        if isinstance(transform, Randomizable):
            transform.set_random_state(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(samples, replacement=True, num_samples=steps * batch_size, generator=generator)
    return DataLoader(Dataset(samples, pipeline), batch_size=batch_size, sampler=sampler, num_workers=0)


def fit(network: nn.Module, volumes: Sequence[LabelledVolume], preprocess: PreprocessConfig, steps: int,
        batch_size: int = 8, learning_rate: float = 1e-3, augment: bool = True, seed: int = 0,
        device: torch.device = torch.device("cpu"), progress: Optional[ProgressCallback] = None,
        should_stop: Optional[StopRequest] = None, max_minutes: Optional[float] = None) -> Dict[str, Any]:
    """Train ``network`` on labelled volumes (their ``classes`` assigned) for ``steps`` optimiser steps.

    Args:
        network: the segmentation network (on ``device``).
        volumes: the labelled volumes on the model grid.
        preprocess: the model's preprocessing (which slices to train on).
        steps: optimiser steps.
        batch_size: slices per step.
        learning_rate: Adam's initial rate (cosine schedule down to 0 at ``steps``).
        augment: random affine changes and gamma, as the autoencoders' training.
        seed: seeds the slices drawn, the augmentation and the network's random parts.
        device: where to train.
        progress: progress events.
        should_stop: a cooperative stop (the model is kept as it is then).
        max_minutes: a time budget.

    Returns:
        ``steps_done``, ``seconds``, ``final_loss``, ``history`` (step, loss every few steps), ``stop_reason``.

    Raises:
        ConfigurationError: the loss became NaN (too high a learning rate).
    """
    seed_everything(seed)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    tracker = ProgressTracker(progress, total=steps)
    history: List[Tuple[int, float]] = []
    started, last_event, recent = time.monotonic(), 0.0, []
    stop_reason, done = "steps", 0
    network.train()
    with explain_out_of_memory("segmentation training", batch_size):
        for batch in _loader(volumes, preprocess, steps, batch_size, augment, seed):
            if should_stop is not None and should_stop():
                stop_reason = "stop request"
                break
            if max_minutes is not None and time.monotonic() - started > 60.0 * max_minutes:
                stop_reason = "time budget"
                break
            image, target = batch["image"].to(device), batch["mask"].to(device).round().long()
            loss = loss_function(network(image), target)
            if not math.isfinite(loss.item()):
                raise ConfigurationError(f"training diverged at step {done + 1} (loss {loss.item()}); lower "
                                         "--learning-rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            done += 1
            recent.append(loss.item())
            if done % _HISTORY_EVERY == 0 or done == steps:
                history.append((done, round(float(np.mean(recent[-_HISTORY_EVERY:])), 5)))
            now = time.monotonic()
            if now - last_event >= _PROGRESS_EVERY_S or done == steps:
                last_event = now
                tracker.emit("progress", done, f"step {done}/{steps}: loss {np.mean(recent[-_HISTORY_EVERY:]):.4f}",
                             step=done, loss=float(np.mean(recent[-_HISTORY_EVERY:])))
    network.eval()
    return {"steps_done": done, "seconds": round(time.monotonic() - started, 1),
            "final_loss": history[-1][1] if history else None, "history": history, "stop_reason": stop_reason}


def train_segmentation(config: SegmentTrainConfig, progress: Optional[ProgressCallback] = None,
                       should_stop: Optional[StopRequest] = None) -> Path:
    """Train a segmentation model as ``config`` says and write it to ``config.out``.

    Args:
        config: images, label maps, the autoencoder to start from, the budget.
        progress: progress events (``done`` carries ``outputs={"model": path}``).
        should_stop: a cooperative stop; the model is saved as it is then and :class:`Cancelled` raised.

    Returns:
        The path of the written model file.

    Raises:
        MedAutoencoderError: unusable input (named), options or autoencoder file; nothing is written then.
        Cancelled: stopped (by ``should_stop`` or the stop file) after the model was saved.
    """
    config.validate()
    pairs = pair_images_with_labels(config.images, config.labels)
    start = starting_point(config)
    require_new_file(config.out, "segmentation.pt", overwrite=config.overwrite,
                     protected=[p for pair in pairs for p in pair] + ([start.source] if start.source else []))
    device = resolve_device(config.device)
    configure_for_speed(device)
    tracker = ProgressTracker(progress, total=1)

    def stop_requested() -> bool:
        return bool((should_stop and should_stop()) or (config.stop_file and Path(config.stop_file).exists()))

    tracker.emit("start", 0, f"preparing {len(pairs)} labelled volume(s) on a {start.preprocess.spacing} mm grid "
                             f"of {start.preprocess.size} voxels ({start.preprocess.foreground} foreground)")
    volumes = []
    for image, label in pairs:
        if stop_requested():
            raise Cancelled("stopped before training began; nothing written")
        volumes.append(prepare_labelled(image, label, start.preprocess))
    labels = label_set([v.values for v in volumes], config.label_names)
    assign_classes(volumes, labels, {i: str(label) for i, (_, label) in enumerate(pairs)})
    network = build_segmentation_network(start.model, labels.n_classes)
    loaded: List[str] = []
    if start.state_dict is not None:
        loaded = load_pretrained(network, start.state_dict, start.model, str(start.source))
    network.to(device)
    begun = "from scratch" if start.source is None else f"from {start.source.name} ({len(loaded)} weight tensors)"
    tracker.emit("log", 0, f"training {labels.n_classes - 1} label(s) {labels.values} {begun} for {config.steps} "
                           f"steps of {config.batch_size} slices")
    result = fit(network, volumes, start.preprocess, config.steps, config.batch_size, config.learning_rate,
                 config.augment, config.seed, device, progress, stop_requested, config.max_minutes)
    if result["steps_done"] == 0 and result["stop_reason"] == "stop request":
        raise Cancelled("stopped before the first training step; nothing written")
    record = SegmentationRecord(
        model=start.model, preprocess=start.preprocess, labels=labels, contrasts=start.contrasts,
        training={"images": [str(i) for i, _ in pairs], "label_maps": [str(l) for _, l in pairs],
                  "n_volumes": len(pairs), "init": None if start.source is None else {
                      "model": str(start.source), "library_version": start.library_version,
                      "weights_loaded": len(loaded)},
                  "steps": config.steps, "batch_size": config.batch_size, "learning_rate": config.learning_rate,
                  "augment": config.augment, "seed": config.seed, "device": str(device), "loss": "DiceCELoss",
                  **result})
    out = save_segmentation_model(config.out, network, record)
    if result["stop_reason"] == "stop request":
        raise Cancelled(f"stopped after {result['steps_done']} of {config.steps} steps; the model as it was then "
                        f"is saved to {out}")
    tracker.emit("done", 1, f"segmentation model saved to {out} ({result['steps_done']} steps, "
                            f"{result['seconds']} s)", outputs={"model": str(out)})
    return out

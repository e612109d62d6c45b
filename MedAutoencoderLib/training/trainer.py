"""Training an autoencoder on healthy volumes, with a healthy validation split and threshold calibration.

The loop is Adam with a cosine schedule; it stops at the epoch limit, the time budget, early stopping on the
validation loss, or a cooperative cancel (callback, SIGINT/SIGTERM through the command line, or a stop file).
The best model so far is always on disk; at the end (also after a cancel) the best weights are reloaded and the
anomaly threshold is calibrated on the held-out healthy volumes, so that a finished or cancelled run leaves a
usable model. A cancel before the first training step (during data preparation) writes nothing.

Launched by ``torchrun`` the same loop trains data-parallel (see :mod:`distributed`): each process trains a
DDP copy on its share of the samples, losses are averaged over all processes, stop decisions come from rank 0,
and only rank 0 writes the model file, calibrates and reports progress.

Adversarial models (``aae``) train GAN-style: after each autoencoder step, whose loss includes the
discriminator's verdict on the reconstruction, the discriminator takes a step on real slices against the
(detached) reconstructions, with its own optimizer.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from MedAutoencoderLib.config import BRAIN_FOREGROUNDS, TrainConfig
from MedAutoencoderLib.detection.scoring import calibrate_threshold, reconstruct_and_score, require_scoring_region
from MedAutoencoderLib.errors import (
    Cancelled,
    ConfigurationError,
    InputImageError,
    MedAutoencoderError,
    OutputExistsError,
)
from MedAutoencoderLib.io.checkpoint import (
    ModelRecord,
    network_from_payload,
    read_model_file,
    record_from_payload,
    save_model,
)
from MedAutoencoderLib.io.loaded_model import brain_foreground
from MedAutoencoderLib.io.volumes import find_volumes, read_image, require_new_file
from MedAutoencoderLib.networks.autoencoders import build_network, generator_and_critic
from MedAutoencoderLib.networks.losses import AutoencoderLoss, discriminator_hinge_loss, reconstruction_from_output
from MedAutoencoderLib.networks.noise import corrupt
from MedAutoencoderLib.preprocessing.prepare import PreparedVolume, prepare_volume
from MedAutoencoderLib.runtime.device import autocast, configure_for_speed, explain_out_of_memory
from MedAutoencoderLib.runtime.progress import ProgressCallback, ProgressTracker
from MedAutoencoderLib.training.distributed import (
    context_from_environment,
    leave_together,
    parallel_network,
    process_group,
    training_device,
)
from MedAutoencoderLib.training.samples import make_loader, start_epoch, volumes_without_samples

StopRequest = Callable[[], bool]


@dataclass
class TrainingState:
    """What changes during training and is saved for resuming."""

    epoch: int = 0
    best_val_loss: float = math.inf
    epochs_without_improvement: int = 0
    history: List[Dict[str, float]] = field(default_factory=list)
    stop_reason: str = ""
    saved_epoch: int = 0  # the epoch whose model this run last saved to --out (0: none yet)
    earlier_seconds: float = 0.0  # training time of the runs this one resumes


@dataclass
class Critic:
    """The discriminator of an adversarial model and what trains it."""

    module: nn.Module  # judges reconstructions for the generator's loss (its gradients there are discarded)
    training_module: nn.Module  # the same, DDP-wrapped under torchrun, for the discriminator's own step
    optimizer: torch.optim.Optimizer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def split_volumes(paths: Sequence[Path], fraction: float, seed: int) -> Tuple[List[Path], List[Path]]:
    """Held-out healthy volumes for validation and calibration; with one volume both use it."""
    if len(paths) < 2 or fraction == 0:
        return list(paths), list(paths)
    order = np.random.default_rng(seed).permutation(len(paths))
    n_val = min(len(paths) - 1, max(1, int(round(fraction * len(paths)))))
    val = sorted(paths[i] for i in order[:n_val])
    return [p for p in paths if p not in val], val


def unfinished_model_path(out: Path) -> Path:
    """Where a run that replaces an existing model (--overwrite) keeps its best model until it ends."""
    return out.with_name(f"{out.stem}.unfinished{out.suffix or '.pt'}")


class Trainer:
    """One training run; ``run()`` returns the path of the written model file."""

    def __init__(self, config: TrainConfig, progress: Optional[ProgressCallback] = None,
                 should_stop: Optional[StopRequest] = None) -> None:
        config.validate()
        config.learning_rate = config.resolved_learning_rate()  # recorded in the model as it was used
        self.config = config
        self.out = Path(config.out)
        self.checkpoint = self.out  # where the best model so far is saved (see _check_output)
        self.progress = progress
        self.should_stop = should_stop or (lambda: False)
        self.context = context_from_environment()
        self.device = training_device(config.device, self.context)
        self.state = TrainingState()
        self.started = time.monotonic()

    # -- set-up -------------------------------------------------------------------------------------------
    def _check_output(self, inputs: Sequence[Path]) -> None:
        """Refuse, before any work, an --out that cannot be written (a folder, a read-only place), that is one of
        the training volumes (with --overwrite too: that would replace the user's data), or an existing file
        without --overwrite (unless it is the model being resumed)."""
        init = self._init_model_path()
        require_new_file(self.config.out, "model.pt", overwrite=True,  # an existing one: below
                         protected=[*inputs, *([init] if init else [])])
        resuming_in_place = self.config.resume and Path(self.config.resume).resolve() == self.out.resolve()
        if self.out.exists() and not (self.config.overwrite or resuming_in_place):
            raise OutputExistsError(f"{self.out}: a model file already exists; pass --overwrite to replace it "
                                    "or choose another --out")
        if self.out.exists() and not resuming_in_place:
            # the model --overwrite replaces stays as it is until this run ends (finished or cancelled, with
            # its threshold calibrated): a run that fails or is killed midway leaves it, and its own best model
            # beside it
            self.checkpoint = unfinished_model_path(self.out)

    def _init_model_path(self) -> Optional[Path]:
        """The model file a fine-tuning run starts from (None: not fine-tuning)."""
        if not self.config.init:
            return None
        if self.config.init == "default":
            from MedAutoencoderLib.io.loaded_model import DEFAULT_MODEL

            return DEFAULT_MODEL
        return Path(self.config.init)

    def _build(self) -> None:
        seed_everything(self.config.seed)
        configure_for_speed(self.device)
        source = Path(self.config.resume) if self.config.resume else self._init_model_path()
        resumed = read_model_file(source) if source else None
        if resumed is not None:  # resumed or fine-tuned: the stored model, preprocessing and detection settings
            record = record_from_payload(resumed, source)
            if self.config.init:  # a brain model fine-tuned: the brain mask asked for, else the learned extractor
                given = self.config.preprocess.foreground
                record.preprocess.foreground = brain_foreground(
                    record.preprocess.foreground, given if given in BRAIN_FOREGROUNDS else None, source)
            self.config.model, self.config.preprocess, self.config.detection = (
                record.model, record.preprocess, record.detection)
            self.network: nn.Module = network_from_payload(resumed, record, source)
            if self.config.init:
                self.data_summary["init"] = {"model": "bundled " + source.name if self.config.init == "default"
                                             else str(source), "library_version": record.library_version}
        else:
            self.network = build_network(self.config.model)
        self.network.to(self.device)
        generator, critic = generator_and_critic(self.network)
        self.training_network = parallel_network(generator, self.context, self.device)
        self.optimizer = torch.optim.Adam(generator.parameters(), lr=self.config.learning_rate)
        self.critic = None if critic is None else self._critic(critic)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=self.config.epochs)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self._needs_grad_scaling())
        self.loss = AutoencoderLoss(self.config.model)
        if self.config.resume:
            self._restore_training_state(resumed, source)

    def _critic(self, module: nn.Module) -> Critic:
        """Adam with beta1 = 0.5 for the discriminator, the usual GAN choice (Radford et al. 2016): less
        momentum lets it follow a generator that keeps changing."""
        optimizer = torch.optim.Adam(module.parameters(), lr=self.config.learning_rate, betas=(0.5, 0.999))
        return Critic(module=module, training_module=parallel_network(module, self.context, self.device),
                      optimizer=optimizer)

    def _needs_grad_scaling(self) -> bool:
        return self.device.type == "cuda" and not torch.cuda.is_bf16_supported()

    def _anneal_over(self, epochs: int) -> None:
        """A resumed run may be given more epochs: continue the cosine schedule over all of them (set from its
        closed form, since the scheduler's own update only rescales the current, possibly zero, rate)."""
        self.scheduler.T_max = epochs
        progress = min(self.scheduler.last_epoch / epochs, 1.0)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * (1 + math.cos(math.pi * progress)) / 2

    def _start_from_init(self, val_loader, tracker: ProgressTracker) -> None:
        """Fine-tuning: the initial weights are the best so far until an epoch beats them on the held-out volumes,
        so that the run never ends with a model worse there than the one it started from."""
        with explain_out_of_memory("validation", self.config.batch_size):
            self.state.best_val_loss = self._validation_loss(val_loader)
        self.data_summary["init"]["initial_val_loss"] = self.state.best_val_loss
        tracker.emit("log", 0, f"held-out loss of {self.data_summary['init']['model']} before fine-tuning: "
                               f"{self.state.best_val_loss:.5f}")
        if self.context.is_main:
            save_model(self.checkpoint, self.network, self._record(), self._training_state())

    def _restore_training_state(self, payload: Dict[str, Any], path: Path) -> None:
        saved = payload.get("training_state")
        if not saved:
            raise ConfigurationError(f"{path}: holds no training state (not saved by a training run; calibrate "
                                     "writes none either: resume from the model it calibrated); cannot resume")
        if saved["epoch"] >= self.config.epochs:  # else nothing is trained, and the run ends without a word
            raise ConfigurationError(f"{path}: has trained {saved['epoch']} epoch(s) already, and --epochs counts "
                                     f"them too: give more than {saved['epoch']} to train on")
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self._anneal_over(self.config.epochs)
        if self.critic is not None:
            self.critic.optimizer.load_state_dict(saved["critic_optimizer"])
        self.state = TrainingState(epoch=saved["epoch"], best_val_loss=saved["best_val_loss"],
                                   epochs_without_improvement=saved["epochs_without_improvement"],
                                   history=list(payload["training"].get("history", [])),
                                   earlier_seconds=float(payload["training"].get("seconds") or 0.0))

    # -- loop -----------------------------------------------------------------------------------------------
    def _stop_requested(self) -> bool:
        stop_file = self.config.stop_file
        return self.should_stop() or bool(stop_file and Path(stop_file).exists())

    def _cancel_if_stopped_before_training(self, tracker: ProgressTracker) -> None:
        """A stop asked for before the first training step ends the run at once, writing nothing: there is no
        model worth keeping yet, and an existing --out file (given with --overwrite) must not be replaced by an
        untrained one."""
        if not self.context.decided_by_rank_zero(self._stop_requested()):
            return
        message = "training cancelled before it began; nothing was written"
        tracker.emit("cancelled", 0, message)
        leave_together(self.context)  # every rank is here: rank 0's decision is everyone's
        raise Cancelled(message)

    def _prepare_all(self, paths: Sequence[Path], tracker: ProgressTracker) -> List[PreparedVolume]:
        """The volumes on the model grid; a stop request is honoured between volumes (preparing many can take
        minutes)."""
        volumes = []
        for i, path in enumerate(paths):
            self._cancel_if_stopped_before_training(tracker)
            tracker.emit("log", 0, f"preparing {path.name} ({i + 1}/{len(paths)})")
            volumes.append(prepare_volume(read_image(path), self.config.preprocess, name=str(path)))
        return volumes

    def _plan_grid(self, paths: Sequence[Path], choose: Sequence[str], tracker: ProgressTracker) -> None:
        """Choose the preprocessing settings not given from the training volumes' fingerprint, record the plan in
        the model's training record and say it."""
        from MedAutoencoderLib.preprocessing.fingerprint import fingerprint_cohort, plan_preprocessing

        tracker.emit("log", 0, f"measuring {len(paths)} volume(s) to choose the "
                               f"{', '.join(choose)} of the model grid")
        fingerprint = fingerprint_cohort(paths, on_volume=lambda i, p: self._cancel_if_stopped_before_training(tracker))
        plan = plan_preprocessing(fingerprint, self.config.model, self.config.preprocess,
                                  choose)
        self.config.preprocess, self.config.model = plan.preprocess, plan.model
        self.config.validate()
        self.data_summary["grid_plan"] = plan.record()
        tracker.emit("log", 0, plan.describe())

    def _grid_advice(self) -> str:
        """Why a volume gives no 2D sample on the model grid, and which options change it."""
        preprocess = self.config.preprocess
        share = f"{preprocess.mask_min_fraction:.0%}"
        field_of_view = " x ".join(f"{n * s:g}" for n, s in zip(preprocess.size, preprocess.spacing))
        return (f"the foreground covers less than {share} of every axial slice of the model grid ({field_of_view} "
                "mm); lower --size or --spacing so that the object fills more of the grid")

    def _require_training_samples(self, volumes: Sequence[PreparedVolume], tracker: ProgressTracker) -> None:
        """Refuse before training when no volume gives a sample; a volume without one is left out, with a
        warning."""
        empty = volumes_without_samples(volumes, self.config.model, self.config.preprocess)
        if len(empty) == len(volumes):
            raise ConfigurationError(f"no training samples in {', '.join(v.name for v in volumes)}: "
                                     f"{self._grid_advice()}")
        for volume in empty:
            tracker.emit("log", 0, f"warning: {volume.name} gives no training sample and is left out: "
                                   f"{self._grid_advice()}")

    def _require_validation_samples(self, volumes: Sequence[PreparedVolume]) -> None:
        """Refuse a validation volume without samples: left in, an empty validation set scores 0 every epoch,
        early stopping ends the run and the first epoch's weights are kept, all without a word."""
        empty = volumes_without_samples(volumes, self.config.model, self.config.preprocess)
        if empty:
            raise InputImageError(f"{', '.join(v.name for v in empty)}: held out for validation, but gives no "
                                  f"validation sample: {self._grid_advice()}, or leave the volume out of --data")

    def _out_of_time(self) -> bool:
        budget = self.config.max_minutes
        return budget is not None and time.monotonic() - self.started > budget * 60

    def _model_input(self, batch: Dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        image = batch["image"]
        if self.config.model.name == "dae":
            return corrupt(image, batch["mask"], self.config.model, generator)
        return image

    def _check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise ConfigurationError(f"training diverged at epoch {self.state.epoch + 1} (loss {loss.item()}); "
                                     "lower --learning-rate")

    def _generator_step(self, batch: Dict[str, torch.Tensor],
                        generator: torch.Generator) -> Tuple[float, torch.Tensor]:
        """One autoencoder step; returns its loss and its reconstruction (detached) for the discriminator."""
        with autocast(self.device):
            outputs = self.training_network(self._model_input(batch, generator))
            outputs["reconstruction"] = outputs["reconstruction"].float()
            if self.critic is not None:
                image = reconstruction_from_output(outputs["reconstruction"], self.config.model)
                outputs["critic_logits"] = self.critic.module(image).float()
            loss = self.loss(outputs, batch["image"])["total"]
        self._check_finite(loss)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        return loss.item(), outputs["reconstruction"].detach()

    def _critic_step(self, real: torch.Tensor, reconstruction: torch.Tensor) -> float:
        """One discriminator step on real slices against reconstructions, in a single forward pass (one DDP
        forward per backward)."""
        fake = reconstruction_from_output(reconstruction, self.config.model)
        with autocast(self.device):
            real_logits, fake_logits = self.critic.training_module(torch.cat([real, fake])).float().chunk(2)
            loss = discriminator_hinge_loss(real_logits, fake_logits)
        self._check_finite(loss)
        self.critic.optimizer.zero_grad(set_to_none=True)  # also drops what the generator's loss left there
        self.scaler.scale(loss).backward()
        self.scaler.step(self.critic.optimizer)
        return loss.item()

    def _train_epoch(self, loader, tracker: ProgressTracker, generator: torch.Generator) -> Dict[str, float]:
        """Mean training losses of the epoch over all ranks: ``train_loss`` (and ``critic_loss``)."""
        self.training_network.train()
        if self.critic is not None:
            self.critic.training_module.train()
        totals: Dict[str, float] = {}
        count = 0
        steps = len(loader)
        for step, batch in enumerate(loader):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            step_losses = {}
            step_losses["train_loss"], reconstruction = self._generator_step(batch, generator)
            if self.critic is not None:
                step_losses["critic_loss"] = self._critic_step(batch["image"], reconstruction)
            self.scaler.update()
            for name, value in step_losses.items():
                totals[name] = totals.get(name, 0.0) + value * len(batch["image"])
            count += len(batch["image"])
            done = self.state.epoch + (step + 1) / steps
            tracker.emit("progress", done, f"epoch {self.state.epoch + 1}/{self.config.epochs} "
                         f"loss {totals['train_loss'] / count:.5f}", epoch=self.state.epoch + 1, step=step + 1,
                         steps=steps)
            if self.context.decided_by_rank_zero(self._stop_requested() or self._out_of_time()):
                break
        return {name: self.context.mean_over_ranks(totals.get(name, 0.0), count, self.device)
                for name in self._loss_names()}

    def _loss_names(self) -> Tuple[str, ...]:
        return ("train_loss",) if self.critic is None else ("train_loss", "critic_loss")

    def _validation_loss(self, loader) -> float:
        self.network.eval()
        generator = torch.Generator().manual_seed(self.config.seed + 1)  # same noise every epoch: comparable
        total, count = 0.0, 0
        with torch.inference_mode():
            for batch in loader:
                batch = {k: v.to(self.device) for k, v in batch.items()}
                with autocast(self.device):
                    outputs = self.network(self._model_input(batch, generator))
                    outputs["reconstruction"] = outputs["reconstruction"].float()
                    loss = self.loss(outputs, batch["image"])["reconstruction"]
                total += loss.item() * len(batch["image"])
                count += len(batch["image"])
        return self.context.mean_over_ranks(total, count, self.device)

    def _record(self, calibration: Optional[Dict[str, Any]] = None) -> ModelRecord:
        return ModelRecord(model=self.config.model, preprocess=self.config.preprocess,
                           detection=self.config.detection, calibration=calibration or {},
                           training={**self.data_summary, "history": self.state.history,
                                     "epochs": self.state.epoch, "best_val_loss": self.state.best_val_loss,
                                     "stop_reason": self.state.stop_reason, "device": str(self.device),
                                     "seconds": round(self.state.earlier_seconds + time.monotonic() - self.started,
                                                      1),  # all runs' (a resumed one's too), as the epochs are
                                     "seed": self.config.seed, "batch_size": self.config.batch_size,
                                     "processes": self.context.world_size,
                                     "learning_rate": self.config.learning_rate})

    def _training_state(self) -> Dict[str, Any]:
        state = {"epoch": self.state.epoch, "best_val_loss": self.state.best_val_loss,
                 "epochs_without_improvement": self.state.epochs_without_improvement,
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.critic is not None:
            state["critic_optimizer"] = self.critic.optimizer.state_dict()
        return state

    def _end_epoch(self, train_losses: Dict[str, float], val_loss: float) -> None:
        self.state.epoch += 1
        self.scheduler.step()
        self.state.history.append({"epoch": self.state.epoch, **train_losses, "val_loss": val_loss})
        if val_loss < self.state.best_val_loss:
            self.state.best_val_loss = val_loss
            self.state.epochs_without_improvement = 0
            if self.context.is_main:
                save_model(self.checkpoint, self.network, self._record(), self._training_state())
                self.state.saved_epoch = self.state.epoch
        else:
            self.state.epochs_without_improvement += 1

    def _saying_what_was_saved(self, error: MedAutoencoderError) -> MedAutoencoderError:
        """``error`` (a run that failed midway: diverged, out of memory) saying what it left at --out: the best
        model of its epochs so far, uncalibrated, in place of what was there (--overwrite)."""
        if isinstance(error, Cancelled) or not (self.context.is_main and self.state.saved_epoch):
            return error
        kept = f"; {self.out} is as it was" if self.checkpoint != self.out else ""
        return type(error)(f"{error}. The best model before it (epoch {self.state.saved_epoch}, its threshold not "
                           f"calibrated) is in {self.checkpoint}: resume from it (--resume {self.checkpoint}) or "
                           f"calibrate it (calibrate){kept}")

    def _stop_reason(self) -> str:
        """Why the run should end after this epoch ("" to go on); rank 0's answer holds for all ranks."""
        reason = ""
        if self._stop_requested():
            reason = "cancelled"
        elif self._out_of_time():
            reason = "time budget"
        elif self.state.epochs_without_improvement >= self.config.patience:
            reason = "early stopping"
        return self.context.decided_by_rank_zero(reason)

    def _loop(self, train_loader, val_loader, tracker: ProgressTracker) -> None:
        generator = torch.Generator().manual_seed(self.context.rank_seed(self.config.seed))
        while self.state.epoch < self.config.epochs:
            start_epoch(train_loader, self.state.epoch)
            with explain_out_of_memory("training", self.config.batch_size):
                train_losses = self._train_epoch(train_loader, tracker, generator)
                val_loss = self._validation_loss(val_loader)
            self._end_epoch(train_losses, val_loss)
            train_loss = train_losses["train_loss"]
            tracker.emit("progress", self.state.epoch, f"epoch {self.state.epoch}/{self.config.epochs} "
                         f"train {train_loss:.5f} val {val_loss:.5f}", epoch=self.state.epoch,
                         train_loss=train_loss, val_loss=val_loss)
            self.state.stop_reason = self._stop_reason()
            if self.state.stop_reason:
                return
        self.state.stop_reason = "epochs"

    # -- end ------------------------------------------------------------------------------------------------
    def _calibrate(self, healthy: Sequence[PreparedVolume], tracker: ProgressTracker) -> Dict[str, Any]:
        best = read_model_file(self.checkpoint)
        self.network.load_state_dict(best["state_dict"])
        tracker.emit("log", self.state.epoch, f"calibrating the threshold on {len(healthy)} healthy volume(s)")
        scored = [reconstruct_and_score(self.network, v, self.config.model, self.config.detection, self.device)[1]
                  for v in healthy]
        calibration = calibrate_threshold(scored, self.config.detection.target_fpr)
        calibration["calibrated_on"] = self.data_summary["validation_files"]
        return calibration

    def run(self) -> Path:
        with process_group(self.context, self.device):
            return self._run()

    def _run(self) -> Path:
        paths = find_volumes(self.config.data)
        if self.context.is_main:  # the only writer
            self._check_output(paths)
        tracker = ProgressTracker(self.progress if self.context.is_main else None, total=self.config.epochs)
        tracker.emit("start", 0, f"training {self.config.model.name} on {self.device}")
        train_paths, val_paths = split_volumes(paths, self.config.validation_fraction, self.config.seed)
        self.data_summary = {"n_volumes": len(paths), "train_files": [p.name for p in train_paths],
                             "validation_files": [p.name for p in val_paths],
                             "validation_is_held_out": set(train_paths).isdisjoint(val_paths)}
        if not self.data_summary["validation_is_held_out"]:
            why = "a single healthy volume" if len(paths) == 1 else "no volume held out (--validation-fraction 0)"
            tracker.emit("log", 0, f"warning: {why}, so the threshold is calibrated on the training volumes "
                                   "themselves and will be too low; give more healthy volumes to hold some out")
        stored = self.config.resume or self.config.init  # a model file's settings are used, not the options
        choose = self.config.preprocessing_to_plan()
        if choose:
            self._plan_grid(paths, choose, tracker)
        for option in [] if stored else self.config.model.ignored_settings():
            tracker.emit("log", 0, f"warning: {option}: this {self.config.model.name} model ignores it")
        self._build()
        if self.config.resume:
            tracker.emit("log", 0, f"resuming from {self.config.resume}: its model, preprocessing and detection "
                                   "settings are used, options given for them here are ignored")
        if self.config.init:
            tracker.emit("log", 0, f"fine-tuning {self.data_summary['init']['model']}: its model, preprocessing "
                                   "and detection settings are used, options given for them here are ignored "
                                   f"(except a brain --foreground; it uses {self.config.preprocess.foreground}); "
                                   "the optimiser and the epochs start afresh")
        train_volumes = self._prepare_all(train_paths, tracker)
        self._require_training_samples(train_volumes, tracker)
        val_volumes = train_volumes if not self.data_summary["validation_is_held_out"] else \
            self._prepare_all(val_paths, tracker)
        if self.data_summary["validation_is_held_out"]:  # else they are the training volumes, checked above
            self._require_validation_samples(val_volumes)
        for volume in val_volumes:  # they calibrate the threshold after training: refuse a useless one now
            require_scoring_region(volume, self.config.detection)
        common = dict(model=self.config.model, preprocess=self.config.preprocess,
                      batch_size=self.config.batch_size, seed=self.config.seed,
                      num_workers=self.config.num_workers, context=self.context)
        train_loader = make_loader(train_volumes, augment=self.config.augment, **common)
        val_loader = make_loader(val_volumes, augment=False, shuffle=False, **common)
        self._cancel_if_stopped_before_training(tracker)
        if self.config.init:
            self._start_from_init(val_loader, tracker)
        if self.context.is_main and self.config.resume and Path(self.config.resume).resolve() != self.out.resolve():
            # the resumed weights are the best so far: without this, a run whose epochs never beat the stored
            # validation loss would calibrate from a missing (or an unrelated, overwritten) --out file
            save_model(self.checkpoint, self.network, self._record(), self._training_state())
        try:  # diverged, or out of memory training or scoring the held-out volumes
            self._loop(train_loader, val_loader, tracker)
            leave_together(self.context)  # before rank 0 calibrates alone, which may outlast the group's timeout
            if not self.context.is_main:
                return self.out
            calibration = self._calibrate(val_volumes, tracker)
        except MedAutoencoderError as exc:
            raise self._saying_what_was_saved(exc) from None
        save_model(self.checkpoint, self.network, self._record(calibration), self._training_state())
        if self.checkpoint != self.out:
            os.replace(self.checkpoint, self.out)  # in one step: the model it replaces, or this run's
        if self.state.stop_reason == "cancelled":
            tracker.emit("cancelled", self.state.epoch, f"cancelled; best model so far saved to {self.out}",
                         outputs={"model": str(self.out)})
            raise Cancelled(f"training cancelled after {self.state.epoch} epoch(s); best model saved to {self.out}")
        tracker.emit("done", self.config.epochs, f"model saved to {self.out} ({self.state.stop_reason})",
                     outputs={"model": str(self.out)})
        return self.out

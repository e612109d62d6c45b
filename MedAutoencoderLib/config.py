"""Configuration objects.

Every choice that changes what a model sees or outputs lives in one of these dataclasses and is stored in the
model file as plain data (dicts of str/int/float/bool/lists), so that a checkpoint loads with
``torch.load(weights_only=True)`` and a model is always used with exactly the preprocessing it was trained
with.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Type, TypeVar

from MedAutoencoderLib.errors import ConfigurationError

T = TypeVar("T")

MODEL_TYPES = ("ae", "sparse", "dae", "vae", "aae")
RECONSTRUCTION_LOSSES = ("mse", "l1", "ssim", "bce")


def to_plain(config: Any) -> Dict[str, Any]:
    """A dataclass as a dict of plain Python values (tuples become lists), safe for ``weights_only`` loading."""
    return dataclasses.asdict(config)


def from_plain(cls: Type[T], data: Dict[str, Any], where: str = "configuration") -> T:
    """Rebuild ``cls`` from :func:`to_plain` output; unknown keys are an error naming ``where``."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigurationError(f"{where}: unknown setting(s) {', '.join(unknown)} for {cls.__name__}")
    values = {
        key: tuple(value) if isinstance(value, list) and isinstance(names[key].default, tuple) else value
        for key, value in data.items()
    }
    return cls(**values)


@dataclass
class PreprocessConfig:
    """How a volume is brought onto the model's grid, recorded in the model.

    The model grid is axis-aligned in patient space (LPS, identity direction), has ``spacing`` (mm, x y z)
    and ``size`` (voxels, x y z), and is centred on the foreground's centroid. One resampling therefore does
    orientation, spacing and crop/pad at once, and the inverse is a resampling onto the input's own grid.
    """

    spacing: Tuple[float, float, float] = (1.5, 1.5, 1.5)
    size: Tuple[int, int, int] = (128, 128, 112)
    normalization: str = "percentile"  # "percentile": divide by the foreground's upper percentile; "zscore"
    upper_percentile: float = 99.0
    clip_max: float = 1.5  # normalised intensities are clipped to [0, clip_max] ("percentile" only)
    mask_min_fraction: float = 0.05  # 2D training keeps slices whose foreground covers at least this share
    foreground: str = "otsu"  # "otsu": bright region, holes filled; "template": brain from the MNI template

    def validate(self) -> None:
        if self.foreground not in ("otsu", "template"):
            raise ConfigurationError(f"foreground must be 'otsu' or 'template', not {self.foreground!r}")
        if self.normalization not in ("percentile", "zscore"):
            raise ConfigurationError(f"normalization must be 'percentile' or 'zscore', not {self.normalization!r}")
        if len(self.spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in self.spacing):
            raise ConfigurationError(f"spacing must be three positive finite numbers (mm), got {self.spacing}")
        if len(self.size) != 3 or min(self.size) < 8:
            raise ConfigurationError(f"size must be three integers >= 8, got {self.size}")


@dataclass
class ModelConfig:
    """Architecture of the autoencoder; ``name`` picks an entry of :mod:`MedAutoencoderLib.networks.autoencoders`."""

    name: str = "dae"
    spatial_dims: int = 2  # 2: slice-wise on axial slices; 3: patch-wise with sliding-window inference
    channels: Tuple[int, ...] = (16, 32, 64, 128)
    latent_channels: int = 8  # width of the code at the bottleneck (small on purpose, Cai et al. 2024)
    patch_size: Tuple[int, int, int] = (64, 64, 64)  # 3D models only (x y z)
    sparsity: str = "l1"  # sparse AE: "l1" on the code, or "kl" towards ``sparsity_target``
    sparsity_weight: float = 1e-3
    sparsity_target: float = 0.05
    kl_weight: float = 1e-3  # VAE beta
    adversarial_weight: float = 0.01  # AAE: weight of the discriminator's verdict beside the reconstruction loss
    noise: str = "coarse"  # DAE: "coarse" (low-resolution, upsampled; Kascenas 2022) or "gaussian"
    noise_std: float = 0.2
    noise_resolution: int = 16  # coarse noise is drawn on this many cells per axis
    reconstruction_loss: str = "mse"

    def validate(self) -> None:
        if self.name not in MODEL_TYPES:
            raise ConfigurationError(f"unknown model type {self.name!r}; choose one of {', '.join(MODEL_TYPES)}")
        if self.spatial_dims not in (2, 3):
            raise ConfigurationError(f"spatial_dims must be 2 or 3, not {self.spatial_dims}")
        if self.reconstruction_loss not in RECONSTRUCTION_LOSSES:
            raise ConfigurationError(
                f"unknown loss {self.reconstruction_loss!r}; choose one of {', '.join(RECONSTRUCTION_LOSSES)}"
            )
        if self.sparsity not in ("l1", "kl"):
            raise ConfigurationError(f"sparsity must be 'l1' or 'kl', not {self.sparsity!r}")
        if self.noise not in ("coarse", "gaussian"):
            raise ConfigurationError(f"noise must be 'coarse' or 'gaussian', not {self.noise!r}")
        _require_at_least(1, latent_channels=self.latent_channels, smallest_channel_count=min(self.channels))
        # NaN passed "not negative" and ended as "training diverged (loss nan); lower --learning-rate"
        invalid = [name for name in ("sparsity_weight", "kl_weight", "noise_std", "adversarial_weight")
                   if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0)]
        if invalid:
            raise ConfigurationError(f"{', '.join(invalid)} must be finite and >= 0, got "
                                     f"{', '.join(str(getattr(self, name)) for name in invalid)}")
        if not 0 < self.sparsity_target < 1:  # the KL sparsity penalty's Bernoulli rate
            raise ConfigurationError(f"sparsity_target must be between 0 and 1, got {self.sparsity_target}")

    @property
    def levels(self) -> int:
        """Encoder levels, each halving the resolution: one per entry of ``channels``, but always four in the
        DAE's U-Net (``channels`` only scales its widths)."""
        return 4 if self.name == "dae" else len(self.channels)

    @property
    def downsampling_factor(self) -> int:
        """Grid sizes must be multiples of this."""
        return 2 ** self.levels

    def describe_levels(self) -> str:
        """The levels as a user can change them, for messages."""
        if self.name == "dae":
            return "the DAE's U-Net, which always has 4 levels"
        return f"a network with {self.levels} levels (one per --channels value)"

    def ignored_settings(self) -> List[str]:
        """Settings changed from their defaults that this model type does not use, each as the command-line
        option and the models that do use it: a --kl-weight given to an ae was stored and silently ignored."""
        default = ModelConfig()
        used_by = {"latent_channels": ("ae", "sparse", "vae", "aae"), "kl_weight": ("vae",),
                   "sparsity": ("sparse",), "adversarial_weight": ("aae",), "noise": ("dae",),
                   "noise_std": ("dae",)}
        ignored = [f"--{name.replace('_', '-')} (used by {', '.join(models)} models only)"
                   for name, models in used_by.items()
                   if self.name not in models and getattr(self, name) != getattr(default, name)]
        if self.spatial_dims == 2 and tuple(self.patch_size) != default.patch_size:
            ignored.append("--patch-size (used by 3D models only)")
        base = self.channels[0]
        used = (base, base, 2 * base, 4 * base, 8 * base)
        doubling = tuple(base * 2 ** i for i in range(len(self.channels)))
        if self.name == "dae" and tuple(self.channels) not in (doubling, used[:len(self.channels)]):
            ignored.append(f"--channels after the first (the DAE's U-Net widths are {base}, {base}, {2 * base}, "
                           f"{4 * base}, {8 * base}, from the first value)")
        return ignored


@dataclass
class DetectionConfig:
    """How a reconstruction becomes an anomaly map and mask; stored in the model, overridable per run."""

    score: str = "residual"  # "residual": intensity difference; "ssim": 1 - local SSIM (texture changes)
    residual: str = "abs"  # "abs", "positive" (hyperintense targets) or "negative" (hypointense targets)
    median_size: int = 5  # in-plane median filter of the residual (Kascenas 2022; Baur 2021)
    mask_erosion_mm: float = 3.0  # edges of the foreground reconstruct badly: score only inside the eroded mask
    # Share of healthy validation voxels allowed above the automatic threshold, and the smallest component kept:
    # chosen on a development set of synthetic lesions (benchmarks/README) separate from the evaluation set.
    target_fpr: float = 0.0002
    min_component_ml: float = 0.2
    batch_size: int = 32  # slices (2D) or patches (3D) per forward pass

    def validate(self) -> None:
        if self.score not in ("residual", "ssim"):
            raise ConfigurationError(f"score must be 'residual' or 'ssim', not {self.score!r}")
        if self.residual not in ("abs", "positive", "negative"):
            raise ConfigurationError(f"residual must be 'abs', 'positive' or 'negative', not {self.residual!r}")
        if not 0 < self.target_fpr < 1:
            raise ConfigurationError(f"target_fpr must be between 0 and 1, got {self.target_fpr}")
        for name in ("min_component_ml", "mask_erosion_mm"):  # nan would switch the filter off unnoticed
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ConfigurationError(f"{name} must be a finite number >= 0, not {getattr(self, name)!r}")
        _require_at_least(1, batch_size=self.batch_size, median_size=self.median_size)
        if self.median_size % 2 == 0:
            raise ConfigurationError(f"median_size must be odd (a window centred on the voxel), got {self.median_size}")


PRECISIONS = ("auto", "float32", "bfloat16")
EXPORT_FORMATS = ("torchscript", "pt2", "onnx")  # MedAutoencoderLib.io.export


@dataclass
class DetectOptions:
    """Per-run choices of ``detect`` that do not change the model."""

    threshold: Optional[float] = None  # None: the threshold calibrated on healthy data and stored in the model
    device: str = "auto"
    # "auto": mixed precision on GPUs, float32 on CPUs; "float32": everywhere; "bfloat16": everywhere (fast on
    # CPUs with AVX512-BF16/AMX); see MedAutoencoderLib.runtime.device.inference_autocast
    precision: str = "auto"
    # volumes of a batch read and preprocessed in worker threads ahead of the network (MedAutoencoderLib.detection.read_ahead;
    # 0: one volume after the other)
    prepare_ahead: int = 0

    def volumes_ahead(self, count: int) -> int:
        """How many of a batch of ``count`` volumes to prepare ahead of the one in the network."""
        return max(0, min(int(self.prepare_ahead), count - 1))

    def validate(self) -> None:
        if isinstance(self.prepare_ahead, bool) or not isinstance(self.prepare_ahead, numbers.Integral) \
                or self.prepare_ahead < 0:
            raise ConfigurationError(f"prepare_ahead must be a whole number >= 0, not {self.prepare_ahead!r}")
        if self.precision not in PRECISIONS:
            raise ConfigurationError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.threshold is not None and not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise ConfigurationError(f"threshold must be a finite number >= 0, not {self.threshold!r} (anomaly maps "
                                     "are never negative: a negative threshold would flag the whole field of view)")


@dataclass
class TrainConfig:
    """Everything ``train`` needs; the command line and the Slicer module both fill one of these."""

    data: List[str] = field(default_factory=list)  # files, folders (volumes inside) or glob patterns
    out: str = "model.pt"
    model: ModelConfig = field(default_factory=ModelConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    epochs: int = 50
    max_minutes: Optional[float] = None
    batch_size: int = 16
    learning_rate: float = 1e-3
    validation_fraction: float = 0.2  # share of volumes held out (healthy) for early stopping and threshold
    patience: int = 10  # epochs without validation improvement before stopping
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0  # data-loading processes; >0 keeps a GPU fed (augmentation runs on the CPU)
    resume: Optional[str] = None
    overwrite: bool = False
    stop_file: Optional[str] = None

    def validate(self) -> None:
        if not self.data:
            raise ConfigurationError("no training data given (files, folders or glob patterns)")
        if self.epochs < 1:
            raise ConfigurationError(f"epochs must be at least 1, got {self.epochs}")
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise ConfigurationError(f"max_minutes must be a positive finite number, got {self.max_minutes}")
        if not 0 <= self.seed <= _MAX_SEED:  # numpy's limit: beyond it a traceback from deep inside numpy
            raise ConfigurationError(f"seed must be in 0..{_MAX_SEED}, got {self.seed}")
        if not 0 <= self.validation_fraction < 1:
            raise ConfigurationError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        _require_at_least(1, batch_size=self.batch_size, patience=self.patience)
        _require_at_least(0, workers=self.num_workers)
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigurationError(f"learning rate must be a positive finite number, got {self.learning_rate}")
        self.model.validate()
        self.preprocess.validate()
        self.detection.validate()
        self._check_grid_fits_network()
        if self.model.reconstruction_loss == "bce" and self.preprocess.normalization == "zscore":
            raise ConfigurationError("loss bce compares a sigmoid output (0 to 1) with the image, but zscore "
                                     "normalisation puts half the foreground below 0: use --normalization "
                                     "percentile with --loss bce, or another --loss")
        if self.model.spatial_dims == 3 and any(p > s for p, s in zip(self.model.patch_size, self.preprocess.size)):
            raise ConfigurationError(f"patch size {tuple(self.model.patch_size)} exceeds the model grid "
                                     f"{tuple(self.preprocess.size)}; lower --patch-size or raise --size")

    def _check_grid_fits_network(self) -> None:
        """Each level halves the 2D grid or the 3D patch: it must divide evenly, and the bottleneck models
        (all but the DAE, whose group norm copes) must keep more than one voxel at the bottleneck, since
        instance normalisation of a single voxel fails inside torch (a 4x4x1 bottleneck is fine)."""
        factor = self.model.downsampling_factor
        three_d = self.model.spatial_dims == 3
        grid = tuple(self.model.patch_size if three_d else self.preprocess.size[:2])
        what, option = ("patch", "--patch-size") if three_d else ("grid", "--size")
        if any(s % factor for s in grid):
            raise ConfigurationError(f"{what} size {grid} must be a multiple of {factor} for "
                                     f"{self.model.describe_levels()}")
        if self.model.name != "dae" and all(s == factor for s in grid):
            raise ConfigurationError(
                f"{what} size {grid} leaves a bottleneck of a single voxel after {self.model.levels} halvings: raise "
                f"{option} to {2 * factor} or more along an axis, or give fewer --channels values")


_MAX_SEED = 2 ** 32 - 1


def _require_at_least(minimum: int, **values: int) -> None:
    for name, value in values.items():
        if value < minimum:
            raise ConfigurationError(f"{name.replace('_', ' ')} must be at least {minimum}, got {value}")

"""Configuration objects.

Every choice that changes what a model sees or outputs lives in one of these dataclasses and is stored in the
model file as plain data (dicts of str/int/float/bool/lists), so that a checkpoint loads with
``torch.load(weights_only=True)`` and a model is always used with exactly the preprocessing it was trained
with.

A field that is also an option of ``train`` is declared with :func:`option`: its flag, help and choices live
beside its default, and the command line's parser (:func:`option_fields`), the config built from parsed
arguments (:func:`from_options`) and the worker's command line (:meth:`TrainConfig.as_arguments`) all come from
that one declaration. Adding a training option is one :func:`option` field (plus its widget in the module).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type, TypeVar, Union

from MedAutoencoderLib.errors import ConfigurationError

T = TypeVar("T")

MODEL_TYPES = ("ae", "sparse", "dae", "vae", "aae")
#: Preprocessing settings that training can choose from its data (MedAutoencoderLib.preprocessing.fingerprint).
PLANNABLE_PREPROCESSING = ("spacing", "size", "normalization")
RECONSTRUCTION_LOSSES = ("mse", "l1", "ssim", "bce")
SPATIAL_DIMS = (2, 3)
SPARSITY_PENALTIES = ("l1", "kl")
NOISE_KINDS = ("coarse", "gaussian", "restore")
NORMALIZATIONS = ("percentile", "zscore")
FOREGROUND_METHODS = ("otsu", "brain", "template")
#: The foreground methods that find the brain (brain models).
BRAIN_FOREGROUNDS = ("brain", "template")
SCORES = ("residual", "ssim")
RESIDUAL_SIGNS = ("abs", "positive", "negative")
PRIORS = ("none", "bright")  # DetectionConfig.prior


@dataclass(frozen=True)
class Option:
    """How a config field appears on ``train``'s command line.

    Args:
        flag: the option, e.g. ``--kl-weight``.
        position: its place in ``train --help`` (ascending; gaps leave room for new options).
        help: the help text.
        choices: the values allowed.
        required: the command line needs it even though the dataclass has a default.
    """

    flag: str
    position: int
    help: Optional[str] = None
    choices: Optional[Tuple[Any, ...]] = None
    required: bool = False

    @property
    def dest(self) -> str:
        """The attribute argparse stores the value in (derived from the flag, as argparse does)."""
        return self.flag.lstrip("-").replace("-", "_")


def option(default: Any = MISSING, *, default_factory: Any = MISSING, **spec: Any) -> Any:
    """A dataclass field that is also a command-line option (``spec``: the :class:`Option`'s fields).

    Args:
        default: the field's default.
        default_factory: the field's default factory (mutable defaults).
        spec: ``flag``, ``position`` and optionally ``help``, ``choices``, ``required``.

    Returns:
        A :func:`dataclasses.field` carrying the :class:`Option`.
    """
    return field(default=default, default_factory=default_factory, metadata={"option": Option(**spec)})


@dataclass(frozen=True)
class OptionField:
    """One option of a (nested) config: where it lives, its value type and its default.

    ``path`` holds the attribute names from the outer config down to the field (``("model", "kl_weight")``);
    ``value_type`` is the type of one value and ``count`` the number of values (1; a fixed tuple's length; or
    ``"+"`` for lists and open tuples).
    """

    path: Tuple[str, ...]
    option: Option
    value_type: type
    count: Union[int, str]
    default: Any


def option_fields(cls: Type[Any]) -> List[OptionField]:
    """The command-line options of config class ``cls`` and of the configs nested in it, in help order.

    Args:
        cls: a config dataclass such as :class:`TrainConfig`.

    Returns:
        Its option fields, sorted by :attr:`Option.position`.

    Raises:
        TypeError: a field's type cannot be given on a command line.
    """
    found: List[OptionField] = []
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for item in dataclasses.fields(cls):
        value = getattr(defaults, item.name)
        if dataclasses.is_dataclass(value):
            found += [dataclasses.replace(nested, path=(item.name, *nested.path))
                      for nested in option_fields(type(value))]
        elif "option" in item.metadata:
            value_type, count = _value_type(hints[item.name])
            found.append(OptionField((item.name,), item.metadata["option"], value_type, count, value))
    return sorted(found, key=lambda f: f.option.position)


def _value_type(hint: Any) -> Tuple[type, Union[int, str]]:
    """The type of one value and how many values a field of type ``hint`` takes."""
    arguments = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is Union and len(arguments) == 1:  # Optional[X]
        return _value_type(arguments[0])
    if origin in (list, List):
        return arguments[0], "+"
    if origin in (tuple, Tuple):
        return arguments[0], "+" if arguments[-1] is Ellipsis else len(arguments)
    if hint in (bool, int, float, str):
        return hint, 1
    raise TypeError(f"a field of type {hint} cannot be a command-line option")


def from_options(cls: Type[T], values: Mapping[str, Any], **overrides: Any) -> T:
    """Config ``cls`` from parsed command-line values: each option field from ``values[option.dest]``, nested
    configs alike, every other field its default.

    Args:
        cls: a config dataclass such as :class:`TrainConfig`.
        values: parsed options by :attr:`Option.dest` (``vars(argparse.Namespace)``).
        overrides: fields of ``cls`` given directly (e.g. ``device``).

    Returns:
        The config (not validated).
    """
    settings: Dict[str, Any] = {}
    for spec in option_fields(cls):
        value = values[spec.option.dest]
        if spec.count != 1 and value is not None:
            value = list(value) if isinstance(spec.default, list) else tuple(value)
        settings[spec.path] = value
    return _build(cls, (), settings, overrides)


def _build(cls: Type[T], prefix: Tuple[str, ...], settings: Dict[Tuple[str, ...], Any],
           overrides: Mapping[str, Any]) -> T:
    defaults = cls()
    kwargs: Dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        path = (*prefix, item.name)
        value = getattr(defaults, item.name)
        if dataclasses.is_dataclass(value):
            kwargs[item.name] = _build(type(value), path, settings, {})
        elif path in settings:
            kwargs[item.name] = settings[path]
    kwargs.update(overrides)
    return cls(**kwargs)


def as_arguments(config: Any) -> List[str]:
    """The command-line options that give ``config``: required ones and those whose value is not the default.

    Args:
        config: a config dataclass instance such as a :class:`TrainConfig`.

    Returns:
        Flags and values, as strings, in help order.
    """
    arguments: List[str] = []
    for spec in option_fields(type(config)):
        value = config
        for name in spec.path:
            value = getattr(value, name)
        if not spec.option.required and _same(value, spec.default):
            continue
        if spec.value_type is bool:
            arguments.append(spec.option.flag)  # a switch: given, it flips the default
        elif value is not None:
            values = list(value) if spec.count != 1 else [value]
            arguments += [spec.option.flag, *(_argument(v, spec.value_type) for v in values)]
    return arguments


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return list(value) == list(default)
    return value == default


def _argument(value: Any, value_type: type) -> str:
    """One value as the command line reads it back exactly (``repr`` keeps every digit of a float)."""
    return repr(float(value)) if value_type is float else str(int(value)) if value_type is int else str(value)


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

    spacing: Tuple[float, float, float] = option((1.5, 1.5, 1.5), flag="--spacing", position=170,
                                                 help="model grid spacing, mm (without it and --size: chosen "
                                                      "from the data, see --grid-as-given)")
    size: Tuple[int, int, int] = option((128, 128, 112), flag="--size", position=180,
                                        help="model grid size, voxels (x y z) (without it and --spacing: "
                                             "chosen from the data)")
    # "percentile": divide by the foreground's upper percentile; "zscore"
    normalization: str = option("percentile", flag="--normalization", position=200, choices=NORMALIZATIONS,
                                help="without it (and without a grid given): percentile, or zscore where the "
                                     "background is not the darkest part of the training volumes")
    upper_percentile: float = 99.0
    clip_max: float = 1.5  # normalised intensities are clipped to [0, clip_max] ("percentile" only)
    mask_min_fraction: float = 0.05  # 2D training keeps slices whose foreground covers at least this share
    # "otsu": bright region, holes filled; "brain": the learned brain extractor; "template": brain from the MNI
    # template's registration
    foreground: str = option("otsu", flag="--foreground", position=210, choices=FOREGROUND_METHODS,
                             help="otsu: bright region with holes filled; brain: the learned brain extractor (brain "
                                  "MRI of any contrast, with or without skull); template: brain from registration "
                                  "to the MNI T1 template")

    def validate(self) -> None:
        if self.foreground not in FOREGROUND_METHODS:
            raise ConfigurationError(f"foreground must be one of {', '.join(map(repr, FOREGROUND_METHODS))}, not "
                                     f"{self.foreground!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigurationError(f"normalization must be 'percentile' or 'zscore', not {self.normalization!r}")
        if len(self.spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in self.spacing):
            raise ConfigurationError(f"spacing must be three positive finite numbers (mm), got {self.spacing}")
        if len(self.size) != 3 or min(self.size) < 8:
            raise ConfigurationError(f"size must be three integers >= 8, got {self.size}")


@dataclass
class ModelConfig:
    """Architecture of the autoencoder; ``name`` picks an entry of :mod:`MedAutoencoderLib.networks.autoencoders`."""

    name: str = option("dae", flag="--model", position=30, choices=MODEL_TYPES,
                       help="autoencoder type (default: dae)")
    # 2: slice-wise on axial slices; 3: patch-wise with sliding-window inference
    spatial_dims: int = option(2, flag="--spatial-dims", position=40, choices=SPATIAL_DIMS,
                               help="2: slice-wise; 3: patch-wise")
    channels: Tuple[int, ...] = option((16, 32, 64, 128), flag="--channels", position=90,
                                       help="features per level (the dae: its U-Net's first width, doubled per level)")
    # width of the code at the bottleneck (small on purpose, Cai et al. 2024)
    latent_channels: int = option(8, flag="--latent-channels", position=100, help="code width (ae, sparse, vae, aae)")
    patch_size: Tuple[int, int, int] = option((64, 64, 64), flag="--patch-size", position=190,
                                              help="3D patch size (x y z)")  # 3D models only
    # sparse AE: "l1" on the code, or "kl" towards ``sparsity_target``
    sparsity: str = option("l1", flag="--sparsity", position=140, choices=SPARSITY_PENALTIES, help="sparse AE penalty")
    sparsity_weight: float = 1e-3
    sparsity_target: float = 0.05
    kl_weight: float = option(1e-3, flag="--kl-weight", position=150, help="VAE beta")
    # AAE: weight of the discriminator's verdict beside the reconstruction loss
    adversarial_weight: float = option(
        0.01, flag="--adversarial-weight", position=160,
        help="aae: weight of the discriminator's verdict beside the reconstruction loss")
    # DAE: "coarse" (low-resolution, upsampled; Kascenas 2022), "gaussian", or "restore": coarse noise plus a
    # synthetic anomaly (a brighter or darker blob) in half of the samples, which the network learns to remove
    noise: str = option("coarse", flag="--noise", position=120, choices=NOISE_KINDS,
                        help="dae corruption: coarse, gaussian, or restore (coarse noise plus synthetic anomalies)")
    noise_std: float = option(0.2, flag="--noise-std", position=130)
    noise_resolution: int = 16  # coarse noise is drawn on this many cells per axis
    # DAE: the U-Net runs at 1/unshuffle of the grid's resolution, each block of unshuffle^dims voxels folded into
    # channels before it and unfolded after it (1: off)
    unshuffle: int = option(1, flag="--unshuffle", position=135,
                            help="dae: run the U-Net at 1/N resolution, each N x N block of voxels folded into "
                                 "channels (2: about 3x faster on CPUs; default 1)")
    reconstruction_loss: str = option("mse", flag="--loss", position=110, choices=RECONSTRUCTION_LOSSES,
                                      help="reconstruction loss")

    def validate(self) -> None:
        if self.name not in MODEL_TYPES:
            raise ConfigurationError(f"unknown model type {self.name!r}; choose one of {', '.join(MODEL_TYPES)}")
        if self.spatial_dims not in SPATIAL_DIMS:
            raise ConfigurationError(f"spatial_dims must be 2 or 3, not {self.spatial_dims}")
        if self.reconstruction_loss not in RECONSTRUCTION_LOSSES:
            raise ConfigurationError(
                f"unknown loss {self.reconstruction_loss!r}; choose one of {', '.join(RECONSTRUCTION_LOSSES)}"
            )
        if self.sparsity not in SPARSITY_PENALTIES:
            raise ConfigurationError(f"sparsity must be 'l1' or 'kl', not {self.sparsity!r}")
        if self.noise not in NOISE_KINDS:
            raise ConfigurationError(f"noise must be 'coarse', 'gaussian' or 'restore', not {self.noise!r}")
        _require_at_least(1, latent_channels=self.latent_channels, smallest_channel_count=min(self.channels),
                          unshuffle=self.unshuffle)
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
        return 2 ** self.levels * (self.unshuffle if self.name == "dae" else 1)

    def describe_levels(self) -> str:
        """The levels as a user can change them, for messages."""
        if self.name == "dae":
            folded = f" after folding blocks of {self.unshuffle} voxels per axis" if self.unshuffle > 1 else ""
            return f"the DAE's U-Net, which always has 4 levels{folded}"
        return f"a network with {self.levels} levels (one per --channels value)"

    def ignored_settings(self) -> List[str]:
        """Settings changed from their defaults that this model type does not use, each as the command-line
        option and the models that do use it: a --kl-weight given to an ae was stored and silently ignored."""
        default = ModelConfig()
        used_by = {"latent_channels": ("ae", "sparse", "vae", "aae"), "kl_weight": ("vae",),
                   "sparsity": ("sparse",), "adversarial_weight": ("aae",), "noise": ("dae",),
                   "noise_std": ("dae",), "unshuffle": ("dae",)}
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

    # "residual": intensity difference; "ssim": 1 - local SSIM (texture changes)
    score: str = option("residual", flag="--score", position=230, choices=SCORES,
                        help="anomaly map: intensity residual, or 1 - local SSIM")
    # "abs", "positive" (hyperintense targets) or "negative" (hypointense targets)
    residual: str = option("abs", flag="--residual", position=220, choices=RESIDUAL_SIGNS,
                           help="which residual sign counts as anomalous (positive: brighter than expected)")
    # "bright": the residual weighted by how much brighter than the brain's typical tissue the input is (its robust
    # z above 0), for contrasts whose lesions are bright (T2, FLAIR), where thresholding alone is strong
    prior: str = option("none", flag="--prior", position=235, choices=PRIORS,
                        help="intensity prior: bright weights the residual by the input's robust z above 0 (T2, "
                             "FLAIR)")
    median_size: int = 5  # in-plane median filter of the residual (Kascenas 2022; Baur 2021)
    mask_erosion_mm: float = 3.0  # edges of the foreground reconstruct badly: score only inside the eroded mask
    # Share of healthy validation voxels allowed above the automatic threshold, and the smallest component kept:
    # chosen on a development set of synthetic lesions (benchmarks/README) separate from the evaluation set.
    target_fpr: float = option(0.0002, flag="--target-fpr", position=240,
                               help="share of healthy validation voxels allowed above the automatic threshold")
    min_component_ml: float = option(0.2, flag="--min-component-ml", position=250,
                                     help="smaller connected components are removed from the anomaly mask")
    batch_size: int = 32  # slices (2D) or patches (3D) per forward pass

    def validate(self) -> None:
        if self.score not in SCORES:
            raise ConfigurationError(f"score must be 'residual' or 'ssim', not {self.score!r}")
        if self.prior not in PRIORS:
            raise ConfigurationError(f"prior must be 'none' or 'bright', not {self.prior!r}")
        if self.residual not in RESIDUAL_SIGNS:
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
#: ``DetectOptions.contrast``: found from the input, or stated (the MRI contrasts of MedAutoencoderLib.brain.contrast)
CONTRAST_CHOICES = ("auto", "T1", "T2", "FLAIR", "PD")
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
    # the input's MRI contrast: "auto" finds it (MedAutoencoderLib.brain.contrast) and a model made for another refuses
    # the scan; a contrast name states it
    contrast: str = option("auto", flag="--contrast", position=10, choices=CONTRAST_CHOICES,
                           help="the inputs' MRI contrast: auto (default) finds it from DICOM tags or the tissue "
                                "ordering inside the brain, and a scan of a contrast the model is not made for is "
                                "refused; a contrast name states it (to run a scan the check misreads)")

    def volumes_ahead(self, count: int) -> int:
        """How many of a batch of ``count`` volumes to prepare ahead of the one in the network."""
        return max(0, min(int(self.prepare_ahead), count - 1))

    def validate(self) -> None:
        if isinstance(self.prepare_ahead, bool) or not isinstance(self.prepare_ahead, numbers.Integral) \
                or self.prepare_ahead < 0:
            raise ConfigurationError(f"prepare_ahead must be a whole number >= 0, not {self.prepare_ahead!r}")
        if self.precision not in PRECISIONS:
            raise ConfigurationError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.contrast not in CONTRAST_CHOICES:
            raise ConfigurationError(f"contrast must be one of {', '.join(CONTRAST_CHOICES)}, not {self.contrast!r}")
        if self.threshold is not None and not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise ConfigurationError(f"threshold must be a finite number >= 0, not {self.threshold!r} (anomaly maps "
                                     "are never negative: a negative threshold would flag the whole field of view)")


#: Adam's learning rate when training from scratch, and when fine-tuning (``--init``): a tenth of it keeps more of
#: what the starting model knows (24 IXI heads, 10 minutes: Dice on lesions in held-out heads 0.33 against 0.29 at
#: 1e-3, and more of the bundled model's synthetic-lesion AP; docs/evaluation.md)
LEARNING_RATE = 1e-3
FINE_TUNING_LEARNING_RATE = 1e-4


@dataclass
class TrainConfig:
    """Everything ``train`` needs; the command line and the Slicer module both fill one of these."""

    # files, folders (volumes inside) or glob patterns
    data: List[str] = option(default_factory=list, flag="--data", position=10, required=True,
                             help="volume files, folders or glob patterns (healthy)")
    out: str = option("model.pt", flag="--out", position=20, required=True,
                      help="model file to write (refused if it exists, see --overwrite)")
    model: ModelConfig = field(default_factory=ModelConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    epochs: int = option(50, flag="--epochs", position=50)
    max_minutes: Optional[float] = option(None, flag="--max-minutes", position=60,
                                          help="time budget; the best model so far is kept")
    batch_size: int = option(16, flag="--batch-size", position=70)
    # None: LEARNING_RATE, or FINE_TUNING_LEARNING_RATE with --init (resolved by resolved_learning_rate())
    learning_rate: Optional[float] = option(None, flag="--learning-rate", position=80,
                                            help="Adam's learning rate (default 1e-3; 1e-4 when fine-tuning with "
                                                 "--init)")
    # share of volumes held out (healthy) for early stopping and threshold
    validation_fraction: float = option(0.2, flag="--validation-fraction", position=260)
    # epochs without validation improvement before stopping
    patience: int = option(10, flag="--patience", position=270, help="early stopping patience in epochs")
    augment: bool = option(True, flag="--no-augment", position=280)
    seed: int = option(0, flag="--seed", position=290)
    device: str = "auto"
    # data-loading processes; >0 keeps a GPU fed (augmentation runs on the CPU)
    num_workers: int = option(0, flag="--workers", position=300, help="data-loading processes (use several on a GPU)")
    resume: Optional[str] = option(None, flag="--resume", position=310, help="continue training from this model file")
    overwrite: bool = option(False, flag="--overwrite", position=320, help="replace an existing --out file")
    stop_file: Optional[str] = option(None, flag="--stop-file", position=330,
                                      help="stop cooperatively (keeping the best model) when this file appears")
    # fine-tuning: start from this model file's weights ("default": the bundled brain T1 model), keeping its
    # architecture, preprocessing and detection settings, with a fresh optimiser and epoch count
    init: Optional[str] = option(
        None, flag="--init", position=315,
        help="fine-tune: start from this model file's weights, or 'default' for the bundled brain T1 model, keeping "
             "its architecture, preprocessing and detection settings (options given for them are ignored); the "
             "optimiser and the epochs start afresh, the threshold is calibrated on the held-out share of --data, "
             "and the result is never worse there, on the validation loss, than the model it started from")
    # Neither spacing nor size off its default: the model grid, and the normalisation unless it is off its default
    # too, are chosen from the training data (MedAutoencoderLib.preprocessing.fingerprint); False keeps them.
    grid_from_data: bool = option(True, flag="--grid-as-given", position=185,
                                  help="keep the default --spacing, --size and --normalization even where none is "
                                       "given (without this, and without --spacing and --size, the model grid is "
                                       "chosen from the data: brain cohorts get 1.5 mm and 128 128 112, others "
                                       "their median spacing and a grid holding their largest foreground; the "
                                       "choice is printed and recorded in the model)")

    def preprocessing_to_plan(self) -> Tuple[str, ...]:
        """The settings of ``preprocess`` that training chooses from its data (see :attr:`grid_from_data`): none
        when resuming, fine-tuning, or when the grid is given (spacing or size off its default); else the spacing and size, and
        the normalisation unless it is off its default.

        Returns:
            Names among :data:`PLANNABLE_PREPROCESSING`.
        """
        defaults = PreprocessConfig()
        grid_given = tuple(self.preprocess.spacing) != defaults.spacing or tuple(self.preprocess.size) != defaults.size
        if not self.grid_from_data or self.resume or self.init or grid_given:
            return ()
        return tuple(name for name in PLANNABLE_PREPROCESSING
                     if name != "normalization" or self.preprocess.normalization == defaults.normalization)

    def resolved_learning_rate(self) -> float:
        """The learning rate a run uses: the one given, else :data:`FINE_TUNING_LEARNING_RATE` when fine-tuning
        (``init``) and :data:`LEARNING_RATE` otherwise.

        Returns:
            The learning rate.
        """
        if self.learning_rate is not None:
            return self.learning_rate
        return FINE_TUNING_LEARNING_RATE if self.init else LEARNING_RATE

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
        if self.init and self.resume:
            raise ConfigurationError("give either --init (fine-tune a model: fresh optimiser and epochs) or --resume "
                                     "(continue its run), not both")
        if self.learning_rate is not None and not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
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

    def as_arguments(self) -> List[str]:
        """The ``train`` options that give this config (as SlicerNNUnet's ``Parameter.asArgList``); the
        device is the worker's to choose (``--device``).

        Returns:
            Flags and values: required ones and those that differ from the defaults.
        """
        return as_arguments(self)

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


#: ``SegmentTrainConfig.foreground``: where a segmentation model looks (the learned brain extractor's brain, or
#: the bright region: the whole head or object). Template registration is not offered: it refuses some real heads.
SEGMENTATION_FOREGROUNDS = ("brain", "otsu")
#: ``SegmentTrainConfig.init`` values that mean "from scratch".
NO_INIT = ("none",)


@dataclass
class SegmentTrainConfig:
    """Everything ``segment-train`` needs: labelled volumes, the autoencoder to start from, the training budget.

    The network and the preprocessing come from the autoencoder given by ``init`` (its U-Net whole for a ``dae``,
    its encoder for the other types); from scratch (``init`` None or ``"none"``) they are the bundled model's
    architecture and grid with freshly initialised weights. ``spacing``, ``size`` and ``foreground`` override the
    preprocessing where given. Autoencoders must be 2D (slice-wise), as the bundled one is.
    """

    images: List[str] = option(default_factory=list, flag="--images", position=10, required=True,
                               help="volume files, folders or glob patterns")
    labels: List[str] = option(default_factory=list, flag="--labels", position=20, required=True,
                               help="label maps matched to the images by name (<stem>, or <stem>_ followed by "
                                    "anything, e.g. <stem>_seg); integer values, 0 = background")
    out: str = option("segmentation.pt", flag="--out", position=30, required=True,
                      help="segmentation model file to write (refused if it exists, see --overwrite)")
    init: Optional[str] = option(
        None, flag="--init", position=40,
        help="the trained autoencoder to start from: a model file, or 'default' for the bundled brain T1 model (a "
             "dae: its U-Net is taken whole, its last layer replaced by a head with one output per label; other "
             "types give their encoder); 'none' or no --init: the same network (the bundled model's, or the "
             "autoencoder's) from scratch")
    label_names: List[str] = option(default_factory=list, flag="--label-names", position=50,
                                    help="a name per label value, in ascending order of the values (default: "
                                         "label_<value>)")
    steps: int = option(500, flag="--steps", position=60, help="optimiser steps (the training budget)")
    batch_size: int = option(8, flag="--batch-size", position=70, help="axial slices per step")
    learning_rate: float = option(1e-3, flag="--learning-rate", position=80)
    max_minutes: Optional[float] = option(None, flag="--max-minutes", position=90,
                                          help="time budget: stop early, keeping the model as it is then")
    spacing: Optional[Tuple[float, float, float]] = option(
        None, flag="--spacing", position=100, help="model grid spacing, mm (default: the autoencoder's)")
    size: Optional[Tuple[int, int, int]] = option(
        None, flag="--size", position=110, help="model grid size, voxels (x y z) (default: the autoencoder's)")
    foreground: Optional[str] = option(
        None, flag="--foreground", position=120, choices=SEGMENTATION_FOREGROUNDS,
        help="where the network looks and labels: brain, the learned brain extractor's brain (the default for "
             "brain models and from scratch); otsu, the bright region (the whole head or object; the default for "
             "other autoencoders)")
    augment: bool = option(True, flag="--no-augment", position=130)
    seed: int = option(0, flag="--seed", position=140)
    overwrite: bool = option(False, flag="--overwrite", position=150, help="replace an existing --out file")
    stop_file: Optional[str] = option(None, flag="--stop-file", position=160,
                                      help="stop cooperatively (saving the model as it is) when this file appears")
    device: str = "auto"

    @property
    def from_scratch(self) -> bool:
        """Whether the network starts from fresh weights."""
        return self.init is None or self.init.lower() in NO_INIT

    def validate(self) -> None:
        if not self.images:
            raise ConfigurationError("no images given (files, folders or glob patterns)")
        if not self.labels:
            raise ConfigurationError("no label maps given (files, folders or glob patterns)")
        _require_at_least(1, steps=self.steps, batch_size=self.batch_size)
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigurationError(f"learning rate must be a positive finite number, got {self.learning_rate}")
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise ConfigurationError(f"max_minutes must be a positive finite number, got {self.max_minutes}")
        if not 0 <= self.seed <= _MAX_SEED:
            raise ConfigurationError(f"seed must be in 0..{_MAX_SEED}, got {self.seed}")
        if self.foreground is not None and self.foreground not in SEGMENTATION_FOREGROUNDS:
            raise ConfigurationError(f"foreground must be one of {', '.join(SEGMENTATION_FOREGROUNDS)}, not "
                                     f"{self.foreground!r}")

    def as_arguments(self) -> List[str]:
        """The ``segment-train`` options that give this config (the device is the worker's to choose).

        Returns:
            Flags and values: required ones and those that differ from the defaults.
        """
        return as_arguments(self)

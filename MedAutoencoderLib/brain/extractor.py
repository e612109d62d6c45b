"""Learned brain extraction for any MRI contrast: a small 3D U-Net at 2 mm, trained on images synthesised from
label maps (:mod:`MedAutoencoderLib.synthesis`) and real IXI T1 heads; its weights ship in the package
(``models/brain_extractor.pt``, model card ``models/brain_extractor.md``).

Brain (kept from the training data, see :mod:`MedAutoencoderLib.synthesis.sources`): parenchyma and ventricles of
cerebrum, cerebellum and brainstem, with the sulcal CSF inside the brain's envelope; no CSF outside it; no holes.

Inference: the scan (any orientation, spacing, oblique direction) is resampled with SimpleITK onto an axis-aligned
2 mm grid covering it, normalised by its percentiles, segmented into background / CSF / grey / white matter; the
brain probability (1 - background) is cleaned on the 2 mm grid (largest connected component, holes filled),
resampled linearly onto the scan's exact grid (detection: onto its model grid) and thresholded at 0.5. A
skull-stripped scan (zero outside its brain) keeps its whole non-zero brain: the mask is the scan's filled non-zero
region wherever the prediction, dilated, reaches it (a region of at most 1.5 times the predicted brain: a head with
skull is far larger).

Refusals, from the network's output: too little brain (no brain, or a slab), too large or too long a "brain" (a
limb), an unsure prediction, or a brain cut by the field of view; each raises :class:`NoBrainError` with one line
naming the scan.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage as ndi

from MedAutoencoderLib.errors import InputImageError, ModelFileError
from MedAutoencoderLib.networks.onednn import convolutions_by_onednn
from MedAutoencoderLib.preprocessing.morphology import bounding_box, dilate_euclidean, largest_component

MODEL_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models",
                          "brain_extractor.pt")
#: Classes the network predicts.
TISSUE_CLASSES = ("background", "csf", "grey_matter", "white_matter")
#: Class probability from which a voxel counts as surely of its tissue (partial-volume voxels at tissue borders
#: are less sure): the tissue levels that tell a scan's contrast are read there.
TISSUE_SURE = 0.9


class NoBrainError(InputImageError):
    """The brain extractor found no usable whole brain in a scan (none, too little, unsure, or cut off)."""


@dataclass(frozen=True)
class NetworkConfig:
    """The extractor network's architecture (stored in the model file)."""

    channels: Tuple[int, ...] = (8, 16, 32, 64, 128)
    strides: Tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 0
    # batch norm: in eval mode its statistics are fixed, so the output does not depend on how much of the grid
    # is background (instance norm's per-volume statistics differ between training crops and whole scans)
    norm: str = "batch"
    out_channels: int = len(TISSUE_CLASSES)
    spacing_mm: float = 2.0


@dataclass(frozen=True)
class ExtractionConfig:
    """How a scan's brain is extracted and when it is refused."""

    threshold: float = 0.5
    stripped_rule: bool = True  # a scan that is zero outside a region keeps that region (filled) as its brain
    stripped_zero_share: float = 0.2  # ... when at least this share of its grid is exactly zero
    stripped_max_ratio: float = 1.5  # ... and that region is at most this many times the predicted brain
    stripped_dilation_mm: float = 6.0  # ... wherever the prediction dilated by this much reaches
    min_brain_ml: float = 600.0
    max_brain_ml: float = 2200.0
    min_confidence: float = 0.85  # mean brain probability over the predicted brain (validation heads: 0.94-0.97)
    max_edge_share: float = 0.25  # share of the brain's surface on the field of view's edge
    # the brain's length along its longest principal axis (a solid ellipsoid's of the same spread): IXI validation
    # and calibration heads 150-185 mm, engine images of them in other contrasts (scaled up to 1.2x) up to 220 mm
    max_length_mm: float = 240.0
    # share of the brain that is CSF below which a scan is refused (off: IXI validation heads have 0.09-0.115 and
    # phantoms 0.02-0.07, but a real FLAIR brain had 0.04: the CSF class is not reliable across contrasts)
    min_csf_share: float = 0.0


@dataclass
class BrainExtraction:
    """A scan's brain mask and what the refusals looked at."""

    mask: Optional[sitk.Image]  # uint8 on the scan's exact grid (None when not asked for: see mask_on)
    brain_ml: float
    confidence: float
    edge_share: float
    csf_share: float
    length_mm: float
    stripped: bool
    seconds: float
    # on the 2 mm grid: each brain voxel's most probable tissue (1 CSF, 2 grey, 3 white matter; 0 outside the brain),
    # and the same where that tissue's probability is TISSUE_SURE or more (0 elsewhere)
    tissue: Optional[sitk.Image] = None
    sure_tissue: Optional[sitk.Image] = None
    scan: Optional[sitk.Image] = None  # the scan on the 2 mm grid (its minimum outside its field of view)
    centre_lps: Optional[np.ndarray] = None  # the brain's centroid (mm), from its voxels on the 2 mm grid
    # the brain mask on any grid ((z, y, x) bool), made there from the 2 mm prediction as ``mask`` is on the scan's
    mask_on: Optional[Callable[[sitk.Image], np.ndarray]] = None


def build_network(config: NetworkConfig = NetworkConfig()) -> torch.nn.Module:
    """The extractor's MONAI U-Net (untrained)."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=config.out_channels, channels=config.channels,
                strides=config.strides, num_res_units=config.num_res_units, norm=config.norm)


def save_extractor(path: str, network: torch.nn.Module, config: NetworkConfig, info: Dict) -> None:
    """Write the model file: a plain state dict, the network config and ``info`` (training facts)."""
    state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
    torch.save({"format": "medautoencoder-brain-extractor", "version": 1, "network": asdict(config),
                "state_dict": state, "info": info}, path)


def load_extractor(path: str = MODEL_FILE,
                   device: Union[str, torch.device] = "cpu") -> Tuple[torch.nn.Module, NetworkConfig]:
    """The extractor network (eval mode, on ``device``) and its config from a model file (``weights_only`` loading),
    loaded once per file and device however they are named.

    Raises:
        ModelFileError: the file is missing or is not a brain extractor of this library.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # "cuda" and "cuda:0" are one device, one network
        device = torch.device("cuda", torch.cuda.current_device())
    return _load_extractor(os.path.abspath(path), str(device))


@lru_cache(maxsize=4)
def _load_extractor(path: str, device: str) -> Tuple[torch.nn.Module, NetworkConfig]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        config = NetworkConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in payload["network"].items()})
        network = build_network(config)
        network.load_state_dict(payload["state_dict"])
    except FileNotFoundError:
        raise ModelFileError(f"{path}: the brain extractor's model file is missing (reinstall the package)") from None
    except Exception as exc:  # any unreadable or foreign file is the same problem for the user
        raise ModelFileError(f"{path}: not a brain extractor model file of this library ({exc})") from None
    # channels-last (with channels-last inputs) runs oneDNN's 3D convolutions about 1.4x faster on CPUs, with the
    # same results; every 3D convolution by oneDNN (PyTorch leaves the thin ones to a slower kernel)
    network = network.eval().to(device=device, memory_format=torch.channels_last_3d)
    return convolutions_by_onednn(network), config


def covering_grid(image: sitk.Image, spacing_mm: float, multiple: int = 16) -> sitk.Image:
    """An empty axis-aligned (identity direction) grid of ``spacing_mm`` covering ``image``'s physical extent,
    each size a multiple of ``multiple`` (the U-Net's total stride), centred on the scan."""
    size = np.array(image.GetSize())
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint(
        [(-0.5 if c == 0 else n - 0.5) for c, n in zip(corner, size)])
        for corner in np.ndindex(2, 2, 2)])
    low, high = corners.min(0), corners.max(0)
    n = np.ceil((high - low) / spacing_mm).astype(int)
    n = np.maximum(multiple, np.ceil(n / multiple).astype(int) * multiple)
    centre = (low + high) / 2
    origin = centre - (n - 1) / 2 * spacing_mm
    grid = sitk.Image([int(v) for v in n], sitk.sitkFloat32)
    grid.SetSpacing([spacing_mm] * 3)
    grid.SetOrigin([float(v) for v in origin])
    return grid


def normalise(array: np.ndarray) -> np.ndarray:
    """The network's input normalisation (same as the synthesis engine's): 0.5th percentile -> 0, 99.5th -> 1,
    clipped to [0, 1.5]."""
    from MedAutoencoderLib.synthesis.engine import normalise_intensities

    return normalise_intensities(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))).numpy()


def scan_on_network_grid(image: sitk.Image, spacing_mm: float) -> Tuple[sitk.Image, np.ndarray, np.ndarray]:
    """The covering grid (:func:`covering_grid`), the scan on it ((z, y, x) float32, its minimum beyond its field of
    view) and where its field of view is: one resampling, NaN outside, gives both."""
    grid = covering_grid(image, spacing_mm)
    array = sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, float("nan"),
                                                 sitk.sitkFloat32))
    outside = np.isnan(array)
    array[outside] = float(sitk.GetArrayViewFromImage(image).min())
    return grid, array, ~outside


def network_input(array: np.ndarray, network: torch.nn.Module) -> torch.Tensor:
    """The normalised scan (:func:`normalise`) as the network takes it: (1, 1, D, H, W), channels-last, on the
    network's device."""
    scan = torch.from_numpy(normalise(array))[None, None].to(next(network.parameters()).device)
    return scan.contiguous(memory_format=torch.channels_last_3d)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes`` (6-connected background), by labelling the background once: its
    components that do not touch the array's border are holes (one labelling instead of iterated dilations)."""
    labels, n = ndi.label(~mask)
    hole = np.ones(n + 1, bool)  # by label: a background component that does not touch the border
    hole[0] = False
    for axis in range(3):
        for end in (0, -1):
            hole[np.take(labels, end, axis=axis)] = False
    if not hole.any():  # as for most masks: nothing to fill
        return mask.copy()
    return mask | hole[labels]


def _filled_region(mask: np.ndarray) -> np.ndarray:
    """:func:`_fill_holes` of ``mask`` computed within its bounding box grown by one voxel (the same result: the
    background beyond the box is one component touching the border)."""
    box = bounding_box(mask, 1)
    if box is None:
        return mask.copy()
    out = np.zeros_like(mask)
    out[box] = _fill_holes(mask[box])
    return out


def _within(mask: np.ndarray, radius: float) -> np.ndarray:
    """Voxels at most ``radius`` voxels (Euclidean) from ``mask``: a dilation by a ball, the same in every
    direction (iterated 6-neighbour dilations reach only radius / sqrt(3) along a diagonal), made in the mask's
    box grown by the radius."""
    out = np.zeros_like(mask, dtype=bool)
    box = bounding_box(mask, int(np.ceil(radius)) + 1)  # nothing beyond it is within reach
    if box is not None:
        out[box] = dilate_euclidean(mask[box], radius)
    return out


def _with_6_neighbours(mask: np.ndarray, border: bool = True) -> np.ndarray:
    """``mask`` dilated by one voxel (6-connected), with ``border`` the array's border voxels set too: what is, or
    touches, ``mask`` (or lies on the edge of the array)."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    out[:, :, 1:] |= mask[:, :, :-1]
    out[:, :, :-1] |= mask[:, :, 1:]
    if not border:
        return out
    out[[0, -1]] = True
    out[:, [0, -1]] = True
    out[:, :, [0, -1]] = True
    return out


def _principal_length(where: np.ndarray) -> float:
    """The length, in voxels, of the solid ellipsoid with the spread of the voxels at ``where`` (their indices, one
    row each) along its longest principal axis (2 sqrt(5) times the standard deviation of their positions along
    that axis; 0 for fewer than 2 voxels)."""
    if len(where) < 2:
        return 0.0
    return float(2.0 * np.sqrt(5.0 * np.linalg.eigvalsh(np.cov(where.T.astype(np.float64)))[-1]))


def _edge_share(brain: np.ndarray, inside: np.ndarray) -> float:
    """Share of the brain's surface voxels that touch the scan's field-of-view edge (or the grid's border); 1 for
    no brain."""
    if not brain.any():
        return 1.0
    surface = brain & _with_6_neighbours(~brain)
    n = int(surface.sum())
    return float((surface & _with_6_neighbours(~inside)).sum()) / n if n else 1.0


def _index_box(image: sitk.Image, grid: sitk.Image, region: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """The box of ``image``'s voxel indices (x, y, z: start, stop) that holds ``region`` of ``grid`` (a (z, y, x)
    mask) grown by one grid voxel: where anything resampled from ``region``'s neighbourhood can be non-zero."""
    box = bounding_box(region)
    if box is None:
        return None
    low = np.array([b.start for b in box][::-1], float) - 1.0
    high = np.array([b.stop - 1 for b in box][::-1], float) + 1.0
    corners = [grid.TransformContinuousIndexToPhysicalPoint([float(v) for v in np.where(c, high, low)])
               for c in np.ndindex(2, 2, 2)]
    index = np.array([image.TransformPhysicalPointToContinuousIndex(p) for p in corners])
    size = np.array(image.GetSize())
    start = np.clip(np.floor(index.min(0)).astype(int) - 1, 0, size)
    stop = np.clip(np.ceil(index.max(0)).astype(int) + 2, 0, size)
    return (start, stop) if np.all(stop > start) else None


def _resampled_above(values: np.ndarray, grid: sitk.Image, image: sitk.Image,
                     box: Optional[Tuple[np.ndarray, np.ndarray]], threshold: float) -> np.ndarray:
    """Where ``values`` (on ``grid``, zero outside ``box``'s reach), resampled linearly onto ``image``'s exact grid,
    exceed ``threshold`` (>= 0): a (z, y, x) bool array, resampled inside ``box`` only (beyond it the resampling
    is zero)."""
    out = np.zeros(image.GetSize()[::-1], bool)
    if box is None:
        return out
    start, stop = box
    source = sitk.GetImageFromArray(values)
    source.CopyInformation(grid)
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(v) for v in stop - start])
    resampler.SetOutputOrigin(image.TransformIndexToPhysicalPoint([int(v) for v in start]))
    resampler.SetOutputSpacing(image.GetSpacing())
    resampler.SetOutputDirection(image.GetDirection())
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    resampler.SetDefaultPixelValue(0.0)
    resampled = resampler.Execute(source)  # kept while its array view is read
    out[start[2]:stop[2], start[1]:stop[1], start[0]:stop[0]] = sitk.GetArrayViewFromImage(resampled) > threshold
    return out


def extract_brain(image: sitk.Image, name: str = "", config: ExtractionConfig = ExtractionConfig(),
                  model_file: str = MODEL_FILE, refuse: bool = True,
                  extractor: Optional[Tuple[torch.nn.Module, NetworkConfig]] = None,
                  on_input_grid: bool = True, device: Optional[Union[str, torch.device]] = None) -> BrainExtraction:
    """The brain mask of ``image`` on its exact grid.

    Args:
        image: a 3D scalar scan (any orientation, spacing, direction).
        name: how messages name the scan (file path or node name; messages start with it when given).
        config: thresholds and the skull-stripped rule.
        model_file: the extractor's model file.
        refuse: raise on a scan without a usable whole brain (else return what was found).
        extractor: a network and its config to use instead of ``model_file``'s (training's validation).
        on_input_grid: make the mask on ``image``'s grid (else only ``mask_on``, for a mask on another grid, such
            as detection's model grid, without one on the scan's full grid).
        device: where the network runs (default the CPU, as detection runs it: on GPUs its time and its masks
            beside the CPU's are still to be measured, ``benchmarks/benchmark_extractor.py --device cuda``); the
            rest is CPU work either way. Ignored with ``extractor``, which runs where it lies.

    Returns:
        The mask (uint8, 1 = brain) on ``image``'s grid, the figures the refusals use, and the scan and its tissue
        classes on the network's grid.

    Raises:
        NoBrainError: no brain, too little or too much of it, an unsure prediction, or a brain cut by the field of
            view (only when ``refuse``).
        ModelFileError: the model file is missing or foreign.
    """
    start = time.perf_counter()
    network, net_config = extractor if extractor is not None else load_extractor(model_file, device or "cpu")
    values = sitk.GetArrayViewFromImage(image)
    grid, array, inside = scan_on_network_grid(image, net_config.spacing_mm)
    with torch.inference_mode():
        probabilities = torch.softmax(network(network_input(array, network))[0], 0).cpu()
        brain_p = (1.0 - probabilities[0]).numpy()
    brain = _filled_region(largest_component(brain_p > config.threshold))
    # what follows looks at the brain and its surface only: in its box grown by one voxel (the same figures)
    box = bounding_box(brain, 1) or tuple(slice(0, 0) for _ in brain.shape)
    offset = np.array([b.start for b in box])
    tissue, sure_tissue = np.zeros(brain.shape, np.uint8), np.zeros(brain.shape, np.uint8)
    with torch.inference_mode():
        tissue_p, tissue_index = probabilities[(slice(1, None),) + box].max(0)  # each voxel's most probable tissue
    tissue[box] = (tissue_index.numpy().astype(np.uint8) + 1) * brain[box]  # 1 CSF, 2 grey, 3 white matter
    sure_tissue[box] = tissue[box] * (tissue_p.numpy() >= TISSUE_SURE)
    voxel_ml = net_config.spacing_mm ** 3 / 1000.0
    brain_ml = float(brain.sum()) * voxel_ml
    confidence = float(brain_p[brain].mean()) if brain.any() else 0.0
    edge = _edge_share(brain[box], inside[box])
    where = np.argwhere(brain[box]) + offset
    length_mm = _principal_length(where) * net_config.spacing_mm
    csf_share = float((tissue[brain] == 1).mean()) if brain.any() else 0.0
    if refuse:
        _refuse(name, brain_ml, confidence, edge, length_mm, config)
        if config.min_csf_share > 0 and csf_share < config.min_csf_share:
            prefix = f"{name}: " if name else ""
            raise NoBrainError(f"{prefix}it does not look like a brain MRI: the brain extractor finds no ventricles "
                               f"in its brain ({csf_share:.1%} CSF; brain MRIs have {config.min_csf_share:.0%} or "
                               "more); brain models (--foreground brain) need a brain MRI")
    stripped, region = False, None
    nonzero = values != 0  # counted as booleans: NumPy counts float32 non-zeros ten times slower
    nonzero_count, input_voxel_ml = int(np.count_nonzero(nonzero)), float(np.prod(image.GetSpacing())) / 1000.0
    largest_ml = config.stripped_max_ratio * brain_ml
    # a head with skull is ruled out before filling its holes (the filled region is no smaller than its non-zero part)
    if config.stripped_rule and brain.any() and nonzero_count <= (1.0 - config.stripped_zero_share) * values.size \
            and nonzero_count * input_voxel_ml <= largest_ml:
        region = _filled_region(nonzero)
        stripped = np.count_nonzero(region) * input_voxel_ml <= largest_ml
    if stripped:  # the filled non-zero region wherever the dilated prediction reaches it
        support = _within(brain, config.stripped_dilation_mm / net_config.spacing_mm)
        source, threshold = support.astype(np.float32), 0.5
    else:
        # the cleaned probability: confident outside the kept component, holes filled, zero beyond one voxel of it
        region = None
        support = _with_6_neighbours(brain, border=False)
        cleaned = np.where(brain, np.maximum(brain_p, 0.5 + 1e-3), np.minimum(brain_p, 0.5 - 1e-3))
        source, threshold = np.where(support, cleaned, 0.0).astype(np.float32), config.threshold

    def mask_on(target: sitk.Image) -> np.ndarray:
        mask = _resampled_above(source, grid, target, _index_box(target, grid, support), threshold)
        if region is None:
            return mask
        if target is image:
            return mask & region
        region_image = sitk.GetImageFromArray(region.view(np.uint8))
        region_image.CopyInformation(image)
        return mask & (sitk.GetArrayViewFromImage(sitk.Resample(
            region_image, target, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)) > 0)

    out = None
    if on_input_grid:
        out = sitk.GetImageFromArray(mask_on(image).astype(np.uint8))
        out.CopyInformation(image)
    centre = np.array(grid.TransformContinuousIndexToPhysicalPoint(where.mean(0)[::-1].tolist())) \
        if len(where) else None
    tissue, sure_tissue, scan = (sitk.GetImageFromArray(a) for a in (tissue, sure_tissue, array))
    for on_grid in (tissue, sure_tissue, scan):
        on_grid.CopyInformation(grid)
    return BrainExtraction(mask=out, brain_ml=brain_ml, confidence=confidence, edge_share=edge, csf_share=csf_share,
                           length_mm=length_mm, stripped=stripped, seconds=time.perf_counter() - start, tissue=tissue,
                           sure_tissue=sure_tissue, scan=scan, centre_lps=centre, mask_on=mask_on)


def _refuse(name: str, brain_ml: float, confidence: float, edge: float, length_mm: float,
            config: ExtractionConfig) -> None:
    name = f"{name}: " if name else ""
    if brain_ml < config.min_brain_ml:
        raise NoBrainError(f"{name}it does not show a whole brain: the brain extractor found {brain_ml:.0f} mL of "
                           f"brain (a whole brain is {config.min_brain_ml:.0f}-{config.max_brain_ml:.0f} mL); a scan "
                           "without a brain, or covering only part of it, cannot be used with brain models "
                           "(--foreground brain); for other scans train a model with --foreground otsu")
    if brain_ml > config.max_brain_ml:
        raise NoBrainError(f"{name}it does not look like a brain MRI: the brain extractor's 'brain' is "
                           f"{brain_ml:.0f} mL (a whole brain is {config.min_brain_ml:.0f}-{config.max_brain_ml:.0f} "
                           "mL); brain models (--foreground brain) need a brain MRI")
    if confidence < config.min_confidence:
        raise NoBrainError(f"{name}it does not look like a brain MRI: the brain extractor is unsure of its brain "
                           f"(confidence {confidence:.2f}, brain MRI give {config.min_confidence:.2f} or more); "
                           "brain models (--foreground brain) need a brain MRI")
    if edge > config.max_edge_share:
        raise NoBrainError(f"{name}it covers only part of the brain: {edge:.0%} of the brain's surface lies on "
                           f"the edge of the field of view (up to {config.max_edge_share:.0%} is accepted); brain "
                           "models (--foreground brain) need the whole brain in view")
    if length_mm > config.max_length_mm:
        raise NoBrainError(f"{name}it does not look like a brain MRI: the brain extractor's 'brain' is "
                           f"{length_mm:.0f} mm long (a brain is at most {config.max_length_mm:.0f} mm); brain models "
                           "(--foreground brain) need a brain MRI")

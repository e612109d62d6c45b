"""From a reconstruction to an anomaly map, a labelmap and a summary.

Post-processing follows what works in the literature (Baur et al. 2021; Kascenas et al. 2022; Meissen et al.
2021): the residual is scored only inside an eroded foreground (edges reconstruct badly), median filtered in
plane, and thresholded at a value calibrated on healthy validation volumes alone for a stated voxel
false-positive rate; connected components smaller than a physical volume are removed. A scan reconstructed worse
as a whole than the healthy calibration scans (another scanner or protocol) has its map divided by how much worse
(:func:`level_factor`), so that the threshold keeps its meaning there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage
from torch import nn

from MedAutoencoderLib.config import DetectionConfig, ModelConfig
from MedAutoencoderLib.detection.inference import reconstruct
from MedAutoencoderLib.detection.median import in_plane_median
from MedAutoencoderLib.errors import InputImageError
from MedAutoencoderLib.io.volumes import GEOMETRY_WARNING_KEY
from MedAutoencoderLib.preprocessing.morphology import bounding_box
from MedAutoencoderLib.preprocessing.prepare import PreparedVolume, erode_mask

_TOP_SHARE_FOR_SCORE = 0.001  # the volume's anomaly score is the mean of its highest 0.1 % map values
# A scan whose error level is this many times the healthy calibration scans' is out of the model's domain: with the
# bundled T1 model the IXI validation and calibration heads (the training site) gave 0.82-1.37, the engine's images
# of them with other scanners' appearances 1.3-2.1 (scripts/choose_error_level.py), real T1 of other sites 1.6-2.1
ERROR_LEVEL_WARNING_RATIO = 1.5


@dataclass
class ScoredVolume:
    """Anomaly evidence on the model grid, before thresholding."""

    score_map: np.ndarray  # (z, y, x) float32, zero outside ``region``
    region: np.ndarray  # (z, y, x) bool: eroded foreground, where scores count
    error_level: float = 0.0  # median |input - reconstruction| in ``region``: how well the scan is reconstructed
    divided_by: float = 1.0  # what ``score_map`` was divided by (:func:`to_error_level`)

    def values(self) -> np.ndarray:
        return self.score_map[self.region]


@dataclass
class DetectionResult:
    """Outputs of one volume, all on the input's own grid."""

    reconstruction: sitk.Image
    anomaly_map: sitk.Image
    anomaly_mask: sitk.Image
    summary: Dict[str, Any]


def structural_dissimilarity(image: np.ndarray, reconstruction: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """1 - local SSIM per axial slice (Gaussian window), for anomalies that change texture more than intensity.

    Written with scipy filters because MONAI's SSIM returns a map cropped by the window (valid convolution),
    which would not line up with the volume."""
    blur = lambda a: ndimage.gaussian_filter(a, sigma=(0, sigma, sigma), mode="nearest")  # noqa: E731
    c1, c2 = 0.01 ** 2, 0.03 ** 2  # data range 1: intensities are normalised
    mu_x, mu_y = blur(image), blur(reconstruction)
    var_x = blur(image * image) - mu_x ** 2
    var_y = blur(reconstruction * reconstruction) - mu_y ** 2
    cov = blur(image * reconstruction) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return (1.0 - ssim).astype(np.float32)


def robust_z(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``image`` as robust z-scores of the values inside ``region`` (median, 1.4826 MAD), float32, any shape.

    Written here because MONAI's ``NormalizeIntensity`` standardises by the mean and standard deviation, which
    the lesions themselves inflate."""
    inside = image[region].astype(np.float64)
    if inside.size == 0:
        return np.zeros(image.shape, np.float32)
    median = float(np.median(inside))
    mad = 1.4826 * float(np.median(np.abs(inside - median))) or 1.0
    return ((image.astype(np.float64) - median) / mad).astype(np.float32)


def scoring_region(prepared: PreparedVolume, config: DetectionConfig) -> np.ndarray:
    """The foreground eroded by ``config.mask_erosion_mm``: where scores count (edges reconstruct badly)."""
    return erode_mask(prepared.foreground, config.mask_erosion_mm, prepared.grid.GetSpacing())


def require_scoring_region(prepared: PreparedVolume, config: DetectionConfig) -> None:
    """Refuse a healthy volume that leaves nothing to score before it is used for calibration: the threshold is
    a quantile of its scored voxels, and an empty set would only fail when calibration comes, after training."""
    if not scoring_region(prepared, config).any():
        raise InputImageError(
            f"{prepared.name}: nothing is left to score: the scoring region (its foreground on the model grid less "
            f"a {config.mask_erosion_mm:g} mm border) is empty; a slab this thin, or a model grid this small for the "
            "object, cannot calibrate a threshold")


def score_volume(prepared: PreparedVolume, reconstruction: np.ndarray, config: DetectionConfig) -> ScoredVolume:
    """Residual (signed as configured) or structural dissimilarity, weighted by the intensity prior if configured,
    median filtered per slice, inside the eroded foreground."""
    residual = prepared.image - reconstruction
    if config.score == "ssim":
        residual = structural_dissimilarity(prepared.image, reconstruction)
    elif config.residual == "abs":
        residual = np.abs(residual)
    elif config.residual == "positive":
        residual = np.maximum(residual, 0.0)
    else:
        residual = np.maximum(-residual, 0.0)
    region = scoring_region(prepared, config)
    if config.prior == "bright":
        residual = residual * np.maximum(robust_z(prepared.image, region), 0.0)
    score_map = np.zeros_like(residual)
    box = bounding_box(region)
    if box is not None:  # filter only the region's bounding box: a third of the grid for a brain
        score_map[box] = in_plane_median(residual[box], config.median_size)
    score_map[~region] = 0.0
    return ScoredVolume(score_map=score_map.astype(np.float32, copy=False), region=region,
                        error_level=error_level(prepared.image, reconstruction, region))


def error_level(image: np.ndarray, reconstruction: np.ndarray, region: np.ndarray) -> float:
    """The median absolute residual inside ``region``: how well a scan is reconstructed as a whole (0 for an empty
    region). Lesions cover a small share of the brain and barely move it; another scanner's appearance does."""
    if not region.any():
        return 0.0
    return float(np.median(np.abs(image[region] - reconstruction[region])))


def level_factor(level: float, reference: Optional[float]) -> float:
    """What a scan's map is divided by: its error level over the healthy calibration scans' (``reference``) where
    it is above it, else 1 (a scan is never made more sensitive than calibrated). Chosen on validation data
    (scripts/choose_error_level.py): healthy IXI heads drawn with other scanners' appearances went from 0.8-13 %
    of the brain flagged to 0.02-0.03 %; the cost is on large lesions, which raise a scan's level too."""
    if reference is None or not np.isfinite(reference) or reference <= 0 or not level > reference:
        return 1.0
    return level / reference


def to_error_level(scored: ScoredVolume, reference: Optional[float]) -> ScoredVolume:
    """``scored`` with its map divided by :func:`level_factor` (a new object; ``scored`` itself is kept)."""
    factor = level_factor(scored.error_level, reference)
    if factor == 1.0:
        return scored
    return ScoredVolume(score_map=(scored.score_map / np.float32(factor)).astype(np.float32), region=scored.region,
                        error_level=scored.error_level, divided_by=factor)


def reconstruct_and_score(network: nn.Module, prepared: PreparedVolume, model: ModelConfig,
                          config: DetectionConfig, device: torch.device, precision: str = "auto",
                          ) -> Tuple[np.ndarray, ScoredVolume]:
    """The network's reconstruction of a prepared volume and its anomaly scores, both on the model grid, as
    training-time calibration and recalibration need them (detection runs the same two steps with a write
    in between)."""
    reconstruction = reconstruct(network, prepared, model, config.batch_size, device, precision)
    return reconstruction, score_volume(prepared, reconstruction, config)


def calibrate_threshold(healthy: Sequence[ScoredVolume], target_fpr: float) -> Dict[str, Any]:
    """The healthy volumes' error level (the median of theirs, :func:`error_level`) and the value exceeded by
    ``target_fpr`` of their scored voxels (pooled), each map brought to that level (:func:`to_error_level`) as
    detection brings it."""
    reference = float(np.median([v.error_level for v in healthy]))
    values = np.concatenate([to_error_level(v, reference).values() for v in healthy])
    threshold = float(np.quantile(values, 1.0 - target_fpr))
    return {"threshold": threshold, "target_fpr": target_fpr, "healthy_volumes": len(healthy),
            "healthy_voxels": int(values.size), "healthy_p50": float(np.median(values)),
            "error_level": reference}


def anomaly_score(scored: ScoredVolume) -> float:
    """Per-volume score: the mean of the highest 0.1 % of scores in the region (robust to single voxels)."""
    values = scored.values()
    if values.size == 0:
        return 0.0
    k = max(1, int(round(values.size * _TOP_SHARE_FOR_SCORE)))
    return float(np.partition(values, values.size - k)[-k:].mean())


def _component_labels(mask: sitk.Image, min_voxels: int = 0) -> sitk.Image:
    """Connected components (full connectivity) numbered largest first, those under ``min_voxels`` removed."""
    return sitk.RelabelComponent(sitk.ConnectedComponent(mask, True), minimumObjectSize=min_voxels,
                                 sortByObjectSize=True)


def voxel_volume_ml(image: sitk.Image) -> float:
    """Volume of one voxel of ``image`` in mL: the spacings' product scaled by the direction matrix's
    determinant, which is 1 for perpendicular axes but less on a sheared grid (a NRRD's space directions may
    be, as a gantry-tilted CT's are), where the spacings' product alone (or ITK's physical size) overstates
    every volume."""
    direction = np.array(image.GetDirection()).reshape(image.GetDimension(), image.GetDimension())
    return float(np.prod(image.GetSpacing())) * abs(float(np.linalg.det(direction))) / 1000.0


def min_component_voxels(voxel_ml: float, min_component_ml: float) -> int:
    """The fewest voxels a component needs to be kept."""
    return int(np.ceil(min_component_ml / voxel_ml)) if min_component_ml > 0 else 0


def component_labels_in_box(values: np.ndarray, threshold: float,
                            min_voxels: int) -> Tuple[np.ndarray, Tuple[slice, ...]]:
    """Connected components (full connectivity) of ``values > threshold``, numbered 1.. largest first, those under
    ``min_voxels`` removed, found only inside the bounding box of the voxels above: the labels of that box and the
    box (an empty box when no voxel is above). Detection and the live threshold in Slicer both use this.
    """
    above = values > threshold
    box = bounding_box(above)
    if box is None:
        return np.zeros((0,) * values.ndim, np.uint32), tuple(slice(0, 0) for _ in range(values.ndim))
    labels = _component_labels(sitk.GetImageFromArray(above[box].view(np.uint8)), min_voxels)
    return sitk.GetArrayFromImage(labels), box


def _components_of(anomaly_map: sitk.Image, threshold: float, min_component_ml: float,
                   values: Optional[np.ndarray] = None) -> Tuple[np.ndarray, Tuple[slice, ...]]:
    """:func:`component_labels_in_box` of the map's voxels (``values`` when given: a view of them taken before)
    above ``threshold``, ``min_component_ml`` in voxels."""
    return component_labels_in_box(sitk.GetArrayViewFromImage(anomaly_map) if values is None else values, threshold,
                                   min_component_voxels(voxel_volume_ml(anomaly_map), min_component_ml))


def _box_on_grid(box_values: np.ndarray, box: Tuple[slice, ...], grid: sitk.Image, dtype: type) -> sitk.Image:
    """``box_values`` at ``box`` of an image of ``grid``'s geometry, zero elsewhere."""
    array = np.zeros(grid.GetSize()[::-1], dtype)
    array[box] = box_values
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(grid)
    return image


def labels_above(anomaly_map: sitk.Image, threshold: float, min_component_ml: float) -> sitk.Image:
    """Connected components of the voxels above ``threshold``, numbered 1.. largest first, those smaller than
    ``min_component_ml`` removed (:func:`component_labels_in_box`), on the map's grid."""
    box_labels, box = _components_of(anomaly_map, threshold, min_component_ml)
    return _box_on_grid(box_labels, box, anomaly_map, np.uint32)


def threshold_mask(anomaly_map: sitk.Image, threshold: float, min_component_ml: float) -> sitk.Image:
    """Voxels above ``threshold``, without connected components smaller than ``min_component_ml`` (uint8)."""
    box_labels, box = _components_of(anomaly_map, threshold, min_component_ml)
    return _box_on_grid(box_labels > 0, box, anomaly_map, np.uint8)


def describe_components(mask: sitk.Image) -> List[Dict[str, Any]]:
    """Size and physical centroid (LPS as in the file, RAS as in Slicer) of each component, largest first."""
    return describe_labels(_component_labels(mask))


def describe_labels(labels: sitk.Image, values: Optional[sitk.Image] = None) -> List[Dict[str, Any]]:
    """Size, physical centroid (LPS and RAS, mm) and, with ``values`` (the anomaly map on the same grid), peak and
    mean value of each label 1..N of ``labels``, in label order (:func:`describe_labels_in_box` on the whole
    grid)."""
    array = sitk.GetArrayViewFromImage(labels)
    return describe_labels_in_box(array, tuple(slice(0, n) for n in array.shape), labels,
                                  None if values is None else sitk.GetArrayViewFromImage(values))


def describe_labels_in_box(box_labels: np.ndarray, box: Tuple[slice, ...], grid: sitk.Image,
                           values: Optional[np.ndarray] = None) -> List[Dict[str, Any]]:
    """:func:`describe_labels` of labels found in a box of a grid (:func:`component_labels_in_box`).

    Args:
        box_labels: labels (k, j, i) of the box.
        box: where the box lies in the grid.
        grid: an image with the grid's geometry (its voxels are not read).
        values: the anomaly map (k, j, i) of the whole grid, for peak and mean; None to leave them out.

    Returns:
        One dict per label present, in label order.

    Vectorised over the labelled voxels only (bincounts), as a live threshold in Slicer calls it on every change.
    """
    where = np.nonzero(box_labels)
    ids = box_labels[where].astype(np.int64)
    count = int(ids.max()) if ids.size else 0
    voxels = np.bincount(ids, minlength=count + 1)[1:]
    present = np.flatnonzero(voxels) + 1
    offsets = [b.start or 0 for b in box]
    mean_index = np.stack([np.bincount(ids, weights=where[axis] + offsets[axis], minlength=count + 1)[present]
                           for axis in range(box_labels.ndim)[::-1]], 1)  # (i, j, k) per label
    mean_index = mean_index.astype(np.float64) / voxels[present - 1][:, None]
    dimension = grid.GetDimension()
    direction = np.array(grid.GetDirection()).reshape(dimension, dimension)
    lps = np.array(grid.GetOrigin()) + mean_index @ (direction * np.array(grid.GetSpacing())).T
    lps = lps.reshape(-1, dimension)
    if values is not None:
        picked = values[box][where].astype(np.float64)
        sums = np.bincount(ids, weights=picked, minlength=count + 1)[present]
        peaks = ndimage.maximum(picked, ids, present) if present.size else []
    voxel_ml = voxel_volume_ml(grid)
    components = []
    for row, label in enumerate(present):
        n = int(voxels[label - 1])
        component = {
            "voxels": n,
            "volume_ml": round(n * voxel_ml, 4),
            "centroid_lps_mm": [round(float(c), 2) for c in lps[row]],
            "centroid_ras_mm": [round(float(-lps[row][0]), 2), round(float(-lps[row][1]), 2),
                                round(float(lps[row][2]), 2)],
        }
        if values is not None:
            component["peak_anomaly"] = round(float(np.atleast_1d(peaks)[row]), 6)
            component["mean_anomaly"] = round(float(sums[row] / n), 6)
        components.append(component)
    return components


def reconstruction_on_input_grid(prepared: PreparedVolume, reconstruction: np.ndarray) -> sitk.Image:
    """The reconstruction in the input's intensity units on its grid; the input's background beyond the model
    grid."""
    return prepared.to_input_grid(prepared.denormalise(reconstruction), outside=prepared.background)


def anomaly_map_on_input_grid(prepared: PreparedVolume, scored: ScoredVolume) -> sitk.Image:
    """The anomaly scores on the input's grid.

    Args:
        prepared: the volume on the model grid, with its input (:func:`~MedAutoencoderLib.preprocessing.prepare_volume`).
        scored: its scores on the model grid (:func:`score_volume`).

    Returns:
        A float32 image on the input's exact grid, zero beyond the model grid.
    """
    return prepared.to_input_grid(scored.score_map)


def finish_detection(prepared: PreparedVolume, reconstruction_image: sitk.Image, scored: ScoredVolume,
                     threshold: float, config: DetectionConfig, anomaly_map: Optional[sitk.Image] = None,
                     map_values: Optional[np.ndarray] = None) -> DetectionResult:
    """Map the scores back onto the input grid, threshold there and summarise.

    Args:
        prepared: the volume on the model grid, with its input.
        reconstruction_image: the reconstruction on the input's grid (:func:`reconstruction_on_input_grid`).
        scored: the scores on the model grid.
        threshold: anomaly-map value above which a voxel is anomalous.
        config: the model's detection settings (smallest component kept).
        anomaly_map: the scores on the input's grid when made already (:func:`anomaly_map_on_input_grid`).
        map_values: ``anomaly_map``'s voxels, an array view taken before the image went to another thread (a
            writer): SimpleITK copies an image whose view is taken while another holder (ITK's writer) has it.

    Returns:
        The three output images and the summary.
    """
    if anomaly_map is None:
        anomaly_map = anomaly_map_on_input_grid(prepared, scored)
    values = sitk.GetArrayViewFromImage(anomaly_map) if map_values is None else map_values
    # components found once, in the box of the voxels above the threshold (the rest of the grid holds none)
    box_labels, box = _components_of(anomaly_map, threshold, config.min_component_ml, values)
    mask = _box_on_grid(box_labels > 0, box, anomaly_map, np.uint8)
    components = describe_labels_in_box(box_labels, box, anomaly_map, values)
    summary = {
        "input": prepared.name,
        "anomaly_score": round(anomaly_score(scored), 6),
        "threshold": threshold,
        "min_component_ml": config.min_component_ml,
        "anomalous_volume_ml": round(sum(c["volume_ml"] for c in components), 4),
        "n_components": len(components),
        "components": components,
    }
    if prepared.source.HasMetaDataKey(GEOMETRY_WARNING_KEY):
        summary["warnings"] = [prepared.source.GetMetaData(GEOMETRY_WARNING_KEY)]
    return DetectionResult(reconstruction=reconstruction_image, anomaly_map=anomaly_map,
                           anomaly_mask=mask, summary=summary)

"""Label maps that the synthesis engine draws images from, prepared once at 2 mm.

Two sources, both read from the shared data folder and cached as small ``.npz`` files (outside the repository):

* the SynthSeg training maps (FreeSurfer aseg labels of 20 whole heads, labels 502-530 outside the brain),
  resampled from 1 mm to 2 mm;
* the IXI DLMUSE parcellations (MUSE numbering, brain only) beside their real T1 heads; the head outside the
  brain gets extra labels by clustering the real T1's non-brain head voxels into a few intensity classes, so that
  IXI heads too can be drawn in any contrast.

Every prepared map has: ``classes`` (uint8, one generation class per voxel: voxels of a class share one random
intensity), ``groups`` (uint8 per class: the anatomical group of :data:`GROUPS`, which the contrast orderings use),
``tissue`` (uint8: 0 background, 1 CSF inside the brain, 2 grey matter, 3 white matter) and, for IXI, ``t1`` (the
real T1, float16). All arrays are in LPS orientation (array axes S, P, L), 2 mm isotropic.

Brain definition (kept by the extractor and its model card): the parenchyma and ventricles of cerebrum,
cerebellum and brainstem plus the CSF the DLMUSE parcellation counts inside the brain (its sulcal CSF, label 1),
no CSF outside the brain's envelope; holes filled. DLMUSE: all labels > 0, holes filled. aseg: every brain label
(not 24, the extracerebral CSF, and not the labels >= 500 outside the brain), closed by two 2 mm voxels (which
takes in sulcal CSF like DLMUSE) and holes filled.
"""
from __future__ import annotations

import glob
import os
from typing import Dict, List

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

#: Anatomical groups of generation classes; the contrast orderings give each group a mean intensity.
GROUPS = ("air", "ventricle_csf", "cortex", "deep_grey", "white_matter", "cerebellar_cortex", "brainstem",
          "extracerebral_csf", "head_other")
AIR, VENTRICLE, CORTEX, DEEP_GREY, WHITE, CEREBELLAR_CORTEX, BRAINSTEM, EXTRA_CSF, HEAD = range(len(GROUPS))
#: Tissue class of each group inside the brain (0 = not brain tissue).
GROUP_TISSUE = np.array([0, 1, 2, 2, 3, 2, 3, 1, 0], dtype=np.uint8)

# FreeSurfer aseg label -> group (both hemispheres). Labels >= 500 are head tissues outside the brain.
ASEG_GROUPS: Dict[int, int] = {
    2: WHITE, 41: WHITE, 7: WHITE, 46: WHITE, 16: BRAINSTEM, 28: WHITE, 60: WHITE, 85: WHITE, 25: WHITE, 57: WHITE,
    3: CORTEX, 42: CORTEX, 8: CEREBELLAR_CORTEX, 47: CEREBELLAR_CORTEX,
    10: DEEP_GREY, 11: DEEP_GREY, 12: DEEP_GREY, 13: DEEP_GREY, 17: DEEP_GREY, 18: DEEP_GREY, 26: DEEP_GREY,
    49: DEEP_GREY, 50: DEEP_GREY, 51: DEEP_GREY, 52: DEEP_GREY, 53: DEEP_GREY, 54: DEEP_GREY, 58: DEEP_GREY,
    30: DEEP_GREY, 62: DEEP_GREY,
    4: VENTRICLE, 5: VENTRICLE, 14: VENTRICLE, 15: VENTRICLE, 43: VENTRICLE, 44: VENTRICLE, 72: VENTRICLE,
    31: VENTRICLE, 63: VENTRICLE,
    24: EXTRA_CSF,
}

# MUSE ROI number -> group, from the MUSE ROI names and checked against the mean IXI T1 intensity per label
# (relative to white matter 81/82, 6 subjects at 2 mm: ventricles 0.51-0.63, label 1 0.38, cortex 0.5-0.95 with
# partial volume, deep grey 1.0-1.13, white matter 0.85-1.25).
MUSE_GROUPS: Dict[int, int] = {
    1: EXTRA_CSF,  # sulcal CSF inside DLMUSE's brain (0.38 of white matter: darker than the ventricles)
    4: VENTRICLE, 11: VENTRICLE, 49: VENTRICLE, 50: VENTRICLE, 51: VENTRICLE, 52: VENTRICLE,  # 3rd, 4th, inf lat, lat
    46: VENTRICLE,  # CSF (0.63)
    23: DEEP_GREY, 30: DEEP_GREY, 31: DEEP_GREY, 32: DEEP_GREY, 36: DEEP_GREY, 37: DEEP_GREY, 47: DEEP_GREY,
    48: DEEP_GREY, 55: DEEP_GREY, 56: DEEP_GREY, 57: DEEP_GREY, 58: DEEP_GREY, 59: DEEP_GREY, 60: DEEP_GREY,
    75: DEEP_GREY, 76: DEEP_GREY,  # accumbens, amygdala, caudate, hippocampus, pallidum, putamen, thalamus, basal fb
    35: BRAINSTEM, 61: WHITE, 62: WHITE, 69: WHITE,  # brainstem, ventral DC, optic chiasm
    38: CEREBELLAR_CORTEX, 39: CEREBELLAR_CORTEX, 71: CEREBELLAR_CORTEX, 72: CEREBELLAR_CORTEX,
    73: CEREBELLAR_CORTEX,  # cerebellum exterior, vermal lobules
    40: WHITE, 41: WHITE,  # cerebellum white matter
    **{label: WHITE for label in range(81, 96)},  # lobar white matter, fornix, internal capsule, corpus callosum
    **{label: CORTEX for label in range(100, 208)},  # cortical regions
}

#: Tissue classes of a segmentation evaluation (label value -> name), merged from the anatomical groups by
#: :data:`GROUP_SEGMENTATION_TISSUE`: CSF (ventricles and the CSF inside the brain), cortical grey matter
#: (cerebral and cerebellar cortex), white matter (with the brainstem), deep grey matter (basal ganglia,
#: thalamus, hippocampus, amygdala, accumbens, basal forebrain).
SEGMENTATION_TISSUES = {1: "csf", 2: "cortical_grey", 3: "white_matter", 4: "deep_grey"}
#: The :data:`SEGMENTATION_TISSUES` value of each group of :data:`GROUPS` (0: not brain).
GROUP_SEGMENTATION_TISSUE = np.array([0, 1, 2, 4, 3, 2, 3, 1, 0], dtype=np.uint8)

SPACING_MM = 2.0
N_HEAD_CLUSTERS = 4  # intensity classes of an IXI head outside the brain (besides air)
SYNTHSEG_DIR = "synthseg_label_maps"
IXI_DIR = "ixi_t1_2mm"


def _oriented(image: sitk.Image) -> sitk.Image:
    return sitk.DICOMOrient(image, "LPS")


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its enclosed holes filled (3D)."""
    return ndi.binary_fill_holes(mask)


def ixi_subject_ids(data_dir: str) -> List[str]:
    """Sorted IXI subject IDs (``IXI012-HH-1211``) of the shared IXI folder."""
    files = sorted(glob.glob(os.path.join(data_dir, IXI_DIR, "t1", "*_T1.nii.gz")))
    return [os.path.basename(f)[:-len("_T1.nii.gz")] for f in files]


def ixi_brain_reference(label_file: str) -> sitk.Image:
    """The reference brain mask of an IXI DLMUSE parcellation on its own grid: labels > 0, holes filled."""
    labels = sitk.ReadImage(label_file)
    mask = fill_holes(sitk.GetArrayViewFromImage(labels) > 0).astype(np.uint8)
    out = sitk.GetImageFromArray(mask)
    out.CopyInformation(labels)
    return out


def _head_mask(t1: np.ndarray) -> np.ndarray:
    """Head (not air) of a T1 array: above a tenth of its 99th percentile, largest component, holes filled."""
    mask = t1 > 0.1 * np.percentile(t1, 99)
    mask = ndi.binary_opening(mask, iterations=1)
    lab, n = ndi.label(mask)
    if n > 1:
        mask = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    mask = ndi.binary_closing(mask, iterations=2)
    return fill_holes(mask)


def muse_groups(muse: np.ndarray) -> np.ndarray:
    """The group of :data:`GROUPS` of every voxel of a DLMUSE parcellation (an unlisted label inside the brain
    counts as white matter; holes of the brain, filled, as CSF inside the brain)."""
    lut = np.full(256, WHITE, dtype=np.uint8)
    lut[0] = AIR
    for label, group in MUSE_GROUPS.items():
        lut[label] = group
    group_map = lut[muse]
    group_map[fill_holes(muse > 0) & (muse == 0)] = EXTRA_CSF
    return group_map


def muse_tissue_labels(muse: np.ndarray) -> np.ndarray:
    """A DLMUSE parcellation merged into the four :data:`SEGMENTATION_TISSUES` (uint8, 0 outside the brain)."""
    return GROUP_SEGMENTATION_TISSUE[muse_groups(muse.astype(np.int32))]


def prepare_ixi(subject: str, data_dir: str) -> Dict[str, np.ndarray]:
    """Generation classes, groups, tissue and real T1 of one IXI subject (see the module docstring)."""
    t1_img = _oriented(sitk.ReadImage(os.path.join(data_dir, IXI_DIR, "t1", f"{subject}_T1.nii.gz"), sitk.sitkFloat32))
    lab_img = _oriented(sitk.ReadImage(os.path.join(data_dir, IXI_DIR, "dlmuse_seg", f"{subject}_T1_DLMUSE.nii.gz")))
    t1 = sitk.GetArrayFromImage(t1_img)
    muse = sitk.GetArrayFromImage(lab_img).astype(np.int32)
    brain = fill_holes(muse > 0)
    group_map = muse_groups(muse)
    # generation classes 0..8 are the groups themselves; the head outside the brain gets N_HEAD_CLUSTERS classes
    classes = group_map.copy()
    head = _head_mask(t1) & ~brain
    values = t1[head]
    edges = np.percentile(values, np.linspace(0, 100, N_HEAD_CLUSTERS + 1)[1:-1])
    classes[head] = len(GROUPS) + np.searchsorted(edges, values).astype(np.uint8)
    groups = np.concatenate([np.arange(len(GROUPS)), np.full(N_HEAD_CLUSTERS, HEAD)]).astype(np.uint8)
    tissue = GROUP_TISSUE[group_map] * brain
    tissue[brain & (tissue == 0)] = 1
    return {"classes": classes, "groups": groups, "tissue": tissue.astype(np.uint8), "t1": t1.astype(np.float16)}


def prepare_synthseg(path: str) -> Dict[str, np.ndarray]:
    """Generation classes, groups and tissue of one SynthSeg aseg head map, resampled to 2 mm."""
    image = _oriented(sitk.Cast(sitk.ReadImage(path), sitk.sitkUInt16))
    size = [int(round(n * s / SPACING_MM)) for n, s in zip(image.GetSize(), image.GetSpacing())]
    origin = image.TransformContinuousIndexToPhysicalPoint([(SPACING_MM / s - 1) / 2 for s in image.GetSpacing()])
    image = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLabelGaussian, origin, [SPACING_MM] * 3,
                          image.GetDirection(), 0, sitk.sitkUInt16)
    aseg = sitk.GetArrayFromImage(image).astype(np.int32)
    labels = np.unique(aseg)
    classes = np.zeros(aseg.shape, np.uint8)
    groups = [AIR]
    brain = np.zeros(aseg.shape, bool)
    for label in labels:
        if label == 0:
            continue
        group = ASEG_GROUPS.get(int(label), HEAD)
        classes[aseg == label] = len(groups)
        groups.append(group)
        if group != HEAD and group != EXTRA_CSF:
            brain |= aseg == label
    brain = fill_holes(ndi.binary_closing(brain, iterations=2))
    group_map = np.asarray(groups, np.uint8)[classes]
    tissue = GROUP_TISSUE[group_map] * brain
    tissue[brain & (tissue == 0)] = 1
    return {"classes": classes, "groups": np.asarray(groups, np.uint8), "tissue": tissue.astype(np.uint8)}


def build_cache(data_dir: str, cache_dir: str, subjects: List[str] = None) -> List[str]:
    """Prepare every label map of ``data_dir`` (the shared data folder) into ``cache_dir`` once.

    Args:
        data_dir: folder holding ``synthseg_label_maps`` and ``ixi_t1_2mm``.
        cache_dir: where the ``.npz`` files go (created; existing files are kept).
        subjects: IXI subject IDs to prepare (default: all).

    Returns:
        The paths of the prepared files (SynthSeg maps first).
    """
    os.makedirs(cache_dir, exist_ok=True)
    paths = []
    for path in sorted(glob.glob(os.path.join(data_dir, SYNTHSEG_DIR, "training_seg_*.nii.gz"))):
        out = os.path.join(cache_dir, "synthseg_" + os.path.basename(path).replace(".nii.gz", ".npz"))
        if not os.path.exists(out):
            np.savez_compressed(out, **prepare_synthseg(path))
        paths.append(out)
    for subject in subjects if subjects is not None else ixi_subject_ids(data_dir):
        out = os.path.join(cache_dir, f"ixi_{subject}.npz")
        if not os.path.exists(out):
            np.savez_compressed(out, **prepare_ixi(subject, data_dir))
        paths.append(out)
    return paths


def load_map(path: str) -> Dict[str, np.ndarray]:
    """A prepared map as a dict of arrays (see the module docstring)."""
    with np.load(path) as data:
        return {key: data[key] for key in data.files}

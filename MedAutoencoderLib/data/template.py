"""The bundled MNI ICBM152 2009a T1 template and its brain mask.

The template (``mni_icbm152_t1_09a.nii.gz``, see ``NOTICE_MNI_ICBM152.txt`` beside it) is the only image the
product carries: the synthetic generator deforms it into training subjects and the brain extraction registers
it to a scan. Only SimpleITK and numpy are used, so this imports in 3D Slicer's Python without torch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedAutoencoderLib.errors import InputImageError

TEMPLATE_PATH = Path(__file__).resolve().parent / "mni_icbm152_t1_09a.nii.gz"


def load_template() -> sitk.Image:
    """The bundled MNI ICBM152 2009a T1 template (skull-stripped, 1 mm) as float32."""
    if not TEMPLATE_PATH.is_file():
        raise FileNotFoundError(
            f"The bundled template {TEMPLATE_PATH} is missing; reinstall MedAutoencoderLib."
        )
    return sitk.Cast(sitk.ReadImage(str(TEMPLATE_PATH)), sitk.sitkFloat32)


def template_brain_mask(template: sitk.Image, threshold_fraction: float = 0.05) -> sitk.Image:
    """Brain mask (uint8, 0/1) of a skull-stripped, low-noise volume such as the template.

    Voxels above ``threshold_fraction`` of the 99th percentile of the positive voxels, holes (ventricles)
    filled, only the largest connected component kept. It is computed at run time instead of shipped so
    that it always matches the template file.
    """
    array = sitk.GetArrayViewFromImage(template)
    positive = array[array > 0]
    if positive.size == 0:
        raise InputImageError("Cannot compute a brain mask: the volume has no positive voxel.")
    threshold = threshold_fraction * float(np.percentile(positive, 99))
    foreground = sitk.Cast(sitk.Cast(template, sitk.sitkFloat32) > threshold, sitk.sitkUInt8)
    largest = sitk.RelabelComponent(sitk.ConnectedComponent(foreground), sortByObjectSize=True) == 1
    return sitk.Cast(sitk.BinaryFillhole(largest), sitk.sitkUInt8)

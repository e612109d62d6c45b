"""Bringing a volume onto a model's grid: resampling, foreground and brain masks, normalisation, morphology, and
the grid chosen from a training cohort (its fingerprint).

Every name below is imported from its module when first used (:mod:`MedAutoencoderLib._lazy`).
"""
from __future__ import annotations

from MedAutoencoderLib._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "fingerprint": ["PLANNABLE", "VolumeFingerprint", "CohortFingerprint", "GridPlan", "fingerprint_volume",
        "fingerprint_cohort", "plan_preprocessing"],
    "morphology": ["Radius", "ball_as_boxes", "dilate", "erode", "close", "bounding_box", "largest_component"],
    "prepare": ["PreparedVolume", "otsu_foreground", "fill_holes_per_slice", "foreground_centroid", "model_grid",
        "normalise", "prepare_volume", "erode_mask", "as_float32"],
})

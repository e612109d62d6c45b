"""Brain masks of head scans (registration of the bundled template, the learned extractor for any contrast) and
the MRI contrast of a brain scan.

Every name below is imported from its module when first used (:mod:`MedAutoencoderLib._lazy`).
"""
from __future__ import annotations

from MedAutoencoderLib._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "registration": ["DEFAULT_SEED", "coarse_copy", "template_brain_centroid", "prepare_registration_template",
        "template_match", "brain_share_outside_view", "template_to_image_transform", "template_brain_mask_on"],
    "contrast": ["CONTRASTS", "ContrastEstimate", "identify_contrast", "contrast_from_tags", "dicom_tags_of",
        "tissue_levels", "contrast_from_levels", "user_contrast", "model_contrasts", "require_model_contrast"],
    "extractor": ["NoBrainError", "BrainExtraction", "ExtractionConfig", "NetworkConfig", "extract_brain",
        "load_extractor", "build_network", "save_extractor"],
})

"""The bundled MNI template and its brain mask, and the synthetic subject and lesion generator.

Every name below is imported from its module when first used (:mod:`MedAutoencoderLib._lazy`).
"""
from __future__ import annotations

from MedAutoencoderLib._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "synthetic": ["LESION_KINDS", "SubjectVariation", "make_healthy_subject", "make_healthy_subject_with_mask",
        "tilted_copy", "insert_lesion", "toy_volume", "make_cohort"],
    "template": ["TEMPLATE_PATH", "load_template", "template_brain_mask"],
})

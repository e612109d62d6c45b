"""Uses of the latent space: features, classification, latent plots and generation (sample, interpolate).

Every name below is imported from its module when first used (:mod:`MedAutoencoderLib._lazy`).
"""
from __future__ import annotations

from MedAutoencoderLib._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "classification": ["CLASSIFIERS", "ClassifyConfig", "ClassificationReport", "LabelTable", "read_labels",
        "labelled_features", "cross_validate"],
    "features": ["VOLUME_ROW", "FEATURE_FORMATS", "FeatureTable", "volume_features", "extract_features",
        "feature_format", "write_features", "NPY_MAGIC", "read_features"],
    "generation": ["sample_prior", "central_slice_code", "interpolate", "slice_stack", "picture", "write_generated"],
    "latent_plot": ["plot_latent_pca"],
})

"""Reading and checking volumes, output names and overwrite policy, writing, model files and exports.

Every name below is imported from its module when first used (:mod:`MedAutoencoderLib._lazy`).
"""
from __future__ import annotations

from MedAutoencoderLib._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "checkpoint": ["FORMAT", "FORMAT_VERSION", "ModelRecord", "save_model", "read_model_file", "record_from_payload",
        "network_from_payload"],
    "export": ["SIDECAR_FORMAT", "ReconstructionOnly", "ExportedNetwork", "input_shape", "sidecar", "sidecar_path",
        "export_format", "export_model", "load_exported"],
    "loaded_model": ["DEFAULT_MODEL", "LoadedModel", "load_model"],
    "outputs": ["pending_path", "PendingOutputs"],
    "volumes": ["PathLike", "VOLUME_SUFFIXES", "OUTPUT_FORMATS", "OUTPUT_KINDS", "SUMMARY_SUFFIX", "volume_suffix",
        "volume_stem", "check_volume", "require_utf8_name", "check_volume_header", "check_volume_grid",
        "physical_points", "inside_grid", "same_grid", "read_image", "read_mask", "GEOMETRY_WARNING_KEY",
        "find_volumes", "pair_by_stem", "DICOM_SERIES_TAGS", "is_detection_output", "output_path", "refuse_overwrite", "require_writable_folder",
        "require_writable_file", "require_new_file", "replacing", "write_image", "write_image_directly",
        "write_text"],
})

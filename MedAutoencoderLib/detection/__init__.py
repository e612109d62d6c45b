"""Detection: reconstruction, scoring, median filter, batch detection of files, read-ahead, shards of a cohort,
evaluation and the evaluation harness per contrast and dataset.

Every name below is imported from its module when first used (:mod:`MedAutoencoderLib._lazy`).
"""
from __future__ import annotations

from MedAutoencoderLib._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "evaluation": ["curve_points", "voxel_metrics", "dice", "robust_z_baseline", "reconstruction_quality",
        "pair_images_with_masks", "mask_on_grid", "finite_or_none", "PooledScores", "evaluate_model", "sample_auroc",
        "summarise", "format_report"],
    "harness": ["BASELINE_DIRECTIONS", "ScanCase", "HarnessConfig", "intensity_baseline", "synthetic_healthy_scan",
        "calibrate_baseline", "evaluate_scans", "Target", "describe_target", "markdown_tables"],
    "inference": ["WINDOW_OVERLAP", "WINDOW_BLEND", "foreground_slices", "reconstruct"],
    "median": ["median_network", "in_plane_median"],
    "pipeline": ["DetectionRun", "OutputCallback", "run_detection", "detect_prepared", "model_name", "input_contrast", "detect_image",
        "detect_files", "detection_targets", "refuse_shared_targets"],
    "read_ahead": ["prepared_in_order"],
    "shards": ["Shard", "parse_shard", "process_shard", "ranks_finish_together"],
    "scoring": ["ScoredVolume", "DetectionResult", "structural_dissimilarity", "scoring_region",
        "require_scoring_region", "score_volume", "reconstruct_and_score", "calibrate_threshold", "anomaly_score",
        "voxel_volume_ml", "min_component_voxels", "component_labels_in_box", "labels_above", "threshold_mask",
        "describe_components", "describe_labels", "describe_labels_in_box", "reconstruction_on_input_grid",
        "anomaly_map_on_input_grid", "finish_detection"],
})

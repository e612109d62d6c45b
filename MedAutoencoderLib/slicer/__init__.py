"""3D Slicer's side without Qt: the MRML bridge (``slicer`` imported lazily), the module's job logic and what a
reader of a result needs (``results``: findings table and live threshold; ``views``: the linked result layout;
``report``: the saved report, numpy and matplotlib only).

Every name below is imported from its module when first used (:mod:`MedAutoencoderLib._lazy`).
"""
from __future__ import annotations

from MedAutoencoderLib._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "bridge": ["ROLE_ATTRIBUTE", "INPUT_REFERENCE", "SELF_REFERENCE", "OWN_ID_ATTRIBUTE", "ROLE_RECONSTRUCTION",
        "ROLE_ANOMALY_MAP", "ROLE_ANOMALY_MASK", "ROLE_ANOMALY_SEGMENTATION", "ROLE_MASK_COLORS", "ROLE_FINDINGS_TABLE",
        "ANOMALY_SEGMENT_ID", "ANOMALY_COLOR", "ANOMALY_MAP_COLOR_NODE_ID", "ANOMALY_MAP_SHOWN_FROM",
        "GEOMETRY_TOLERANCE", "DetectionNodes", "world_geometry", "volume_node_to_sitk", "ijk_to_ras_from_sitk",
        "update_volume_node_from_sitk", "check_on_input_grid", "default_input_volume", "output_node_name",
        "find_output_node", "get_or_create_output_node", "write_output_volume", "anomaly_mask_color_node",
        "show_anomaly_map_colors", "update_anomaly_segmentation", "apply_detection_result", "place_beside_input",
        "detect_volume_node", "write_volume_for_worker", "read_worker_outputs", "WorkerResult"],
    "job": ["TRAINING_STOP_GRACE_MS", "POLL_INTERVAL_MS", "EventLoop", "removed_on_failure", "MedAutoencoderJob",
        "SharedStandby", "WorkerJobs"],
    "segmentation": ["SEGMENT_COLORS", "segment_names", "label_values_by_name", "labels_on_volume",
        "write_labelled_pair_for_worker", "labelmap_to_segmentation_node", "segment_volume_node"],
    "report": ["MAX_FINDINGS_SHOWN", "MAX_TABLE_ROWS", "ReportData", "contrast_text", "domain_text", "write_report",
               "default_report_path"],
    "results": ["SUMMARY_ATTRIBUTE", "THRESHOLD_ATTRIBUTE", "CALIBRATED_THRESHOLD_ATTRIBUTE",
        "DEFAULT_MIN_COMPONENT_ML", "TABLE_COLUMNS", "Finding", "findings_from_summary", "world_grid",
        "anomaly_map_image", "find_components", "read_summary", "calibrated_threshold",
        "threshold_range",
        "update_findings_table", "finding_position", "write_findings_csv", "publish_findings", "result_nodes",
        "apply_threshold", "jump_to_finding", "save_report"],
    "views": ["LAYOUT_ID", "INPUT_VIEW", "RECONSTRUCTION_VIEW", "OVERLAY_VIEW", "VIEW_NAMES",
        "DEFAULT_OVERLAY_OPACITY", "layout_description", "layout_node", "show_result_layout", "restore_layout",
        "result_composite_nodes", "configure_result_views", "show_segmentation_in_3d", "set_overlay_opacity"],
})

"""Segmentation from autoencoder pre-training: a segmentation network made from a trained autoencoder (the DAE's
U-Net whole, or an AE's encoder), trained on a few labelled volumes, and volumes segmented on their own grid.

Every name below is imported from its module when first used (:mod:`MedAutoencoderLib._lazy`).
"""
from __future__ import annotations

from MedAutoencoderLib._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "labels": ["MAX_LABELS", "LabelSet", "label_values", "label_set"],
    "networks": ["SegmentationUNet", "EncoderSegmenter", "build_segmentation_network", "pretrained_weights",
                 "load_pretrained"],
    "model_file": ["SegmentationRecord", "LoadedSegmentationModel", "save_segmentation_model",
                   "load_segmentation_model", "describe_segmentation_model"],
    "data": ["LabelledVolume", "pair_images_with_labels", "labels_on_grid", "prepare_labelled", "assign_classes"],
    "trainer": ["StartingPoint", "starting_point", "fit", "train_segmentation"],
    "inference": ["OUTPUT_KIND", "predict_probabilities", "classes_on_input_grid", "SegmentationResult",
                  "segment_image", "segmentation_targets", "segment_files"],
})

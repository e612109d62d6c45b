"""The machine the library runs on: device choice, memory allocator, thread pools, progress reporting and
torchrun's processes.

Every name below is imported from its module when first used (:mod:`MedAutoencoderLib._lazy`).
"""
from __future__ import annotations

from MedAutoencoderLib._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "allocator": ["keep_freed_memory_for_reuse", "give_freed_memory_back"],
    "launch": ["LAUNCH_VARIABLES", "launched_by_torchrun", "end_launched_process"],
    "device": ["resolve_device", "configure_for_speed", "autocast", "inference_autocast", "explain_out_of_memory"],
    "progress": ["ProgressCallback", "ProgressTracker", "json_lines", "progress_bar", "make_reporter"],
    "threads": ["wait_for", "WaitingThreadPool"],
})

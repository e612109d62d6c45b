"""Running the command line as a background worker: jobs, the standby detection worker and its serve loop.

Every name below is imported from its module when first used (:mod:`MedAutoencoderLib._lazy`).
"""
from __future__ import annotations

from MedAutoencoderLib._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "jobs": ["PROGRESS_EVENTS", "OUTPUT_EVENT", "DEVICE_CHOICES", "parse_progress_line", "format_duration",
        "cli_device", "library_parent_dir", "python_launcher", "worker_environment", "cli_command", "detect_command",
        "detect_arguments", "train_command", "descendant_pids", "kill_process_tree", "FollowedJob", "WorkerJob",
        "start_worker"],
    "serve": ["SERVED_EVENT", "SERVED_COMMANDS", "request_arguments", "serve"],
    "standby": ["DEFAULT_IDLE_SECONDS", "ServedJob", "StandbyWorker"],
})

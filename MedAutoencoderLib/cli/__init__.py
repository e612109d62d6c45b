"""The command line ``python -m MedAutoencoderLib`` (``medautoencoder``): parser, commands, demo, exit codes.

Every name below is imported from its module when first used (:mod:`MedAutoencoderLib._lazy`).
"""
from __future__ import annotations

from MedAutoencoderLib._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "commands": ["COMMANDS", "build_parser", "main"],
    "demo": ["overlay_png", "demo_outputs", "run_demo"],
    "exit_codes": ["EXIT_USER_ERROR", "EXIT_BAD_REQUEST", "EXIT_CANCELLED"],
})

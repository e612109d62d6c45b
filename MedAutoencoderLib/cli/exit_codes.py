"""Exit statuses of the command line (``python -m MedAutoencoderLib``).

The clients that start it as a worker (:mod:`MedAutoencoderLib.worker`) read them from here. This module
imports nothing, so that those clients stay free of torch.
"""
from __future__ import annotations

#: An error meant for the user (``error: ...`` on stderr).
EXIT_USER_ERROR = 1
#: A request the worker could not parse, as argparse exits on a bad command line.
EXIT_BAD_REQUEST = 2
#: The command was cancelled (Ctrl-C, SIGTERM or the stop file); a training run saved its best model first.
EXIT_CANCELLED = 130

"""Processes that ``torchrun`` launched: how to tell them, and how they end.

Without torch: ``python -m MedAutoencoderLib`` asks before any command has loaded it.
"""
from __future__ import annotations

import gc
import os
import sys
from typing import Mapping

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # what torchrun tells each process it starts


def launched_by_torchrun(environment: Mapping[str, str] = os.environ) -> bool:
    """Whether ``environment`` holds the variables ``torchrun`` sets for the processes it starts."""
    return all(name in environment for name in LAUNCH_VARIABLES)


def end_launched_process(code: int) -> None:
    """End a process that ``torchrun`` launched with exit status ``code``, without Python's finalization;
    elsewhere return at once.

    A process group that a ``DistributedDataParallel`` ever wrapped outlives ``destroy_process_group`` (torch
    2.13), and so do its gloo worker threads. One of them letting go of its last collective's tensors while the
    interpreter finalizes must take the GIL, which Python then refuses by ending the thread inside a C++
    destructor, and the process aborts ("terminate called without an active exception") after a command that
    succeeded: measured in 1 of 40 two-process runs of a small DDP script on a loaded 2-core machine (0 of 70
    ending here), and in a CI run of the tests. The command has returned, so its results are written; what
    finalization would still do is done here (collect cyclic garbage, such as a data loader's persistent
    workers, and flush the output streams; a stream that cannot be flushed, a closed pipe, keeps the status).

    Args:
        code: the exit status of the command.
    """
    if not launched_by_torchrun():
        return
    gc.collect()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)

"""One volume's output files, written in the background and given their names together.

Why: detection hands each output to a writer thread as soon as it exists (the reconstruction before the scores
are computed), so a volume that fails after its first output (running out of memory while scoring, a defect)
used to leave that output behind, beside an earlier run's map and mask of the same volume, which then no longer
belonged together. Here every file is written under a hidden temporary name in the same folder and renamed
only when all of the volume's files are written; a failed volume leaves nothing new, and what an earlier run
wrote stays as it was.
"""
from __future__ import annotations

import os
from concurrent.futures import Executor, Future, wait
from pathlib import Path
from typing import Callable, List, Tuple

from MedAutoencoderLib.io import volume_suffix


def pending_path(target: Path) -> Path:
    """The hidden name a file is written under until its set is complete (same folder, same format suffix)."""
    return target.with_name(f".{target.name}.pending{volume_suffix(target) or target.suffix}")


class PendingOutputs:
    """Files of one volume, each written by ``writer`` under :func:`pending_path`, then all renamed to their own
    names (:meth:`commit`) or all removed (:meth:`discard`). Either empties the set, so calling again is a no-op."""

    def __init__(self, writer: Executor) -> None:
        self._writer = writer
        self._writes: List[Tuple[Future, Path]] = []

    def submit(self, target: Path, write: Callable[[Path], object]) -> None:
        """Start ``write(path)`` on the writer for the file that will be ``target``."""
        self._writes.append((self._writer.submit(write, pending_path(target)), target))

    def commit(self) -> None:
        """Wait for every write, then give each file its name; if any write failed, remove them all and raise
        the first failure."""
        wait([future for future, _ in self._writes])
        failure = next((future.exception() for future, _ in self._writes if future.exception() is not None), None)
        if failure is not None:
            self.discard()
            raise failure
        writes, self._writes = self._writes, []
        for _, target in writes:
            os.replace(pending_path(target), target)

    def discard(self) -> None:
        """Wait for every write and remove what was written."""
        writes, self._writes = self._writes, []
        wait([future for future, _ in writes])
        for _, target in writes:
            pending_path(target).unlink(missing_ok=True)

"""One volume's output files, written in the background and given their names once all of them are written.

Why: detection hands each output to a writer thread as soon as it exists (the reconstruction before the scores
are computed), so a volume that fails after its first output (running out of memory while scoring, a defect)
would leave that output behind, beside an earlier run's map and mask of the same volume, which would then not
belong together. Here every file is written under a hidden temporary name in the same folder; when the last of
a volume's files is written, the writer thread renames them one after the other (a rename within a folder
replaces the earlier file in one step); a failed volume's files are removed. So a failed volume leaves nothing
new, an earlier run's outputs of it stay as they were, and a volume that was written keeps its outputs whatever
happens to the volumes after it.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import CancelledError, Executor, Future
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from MedAutoencoderLib.errors import OutputLocationError
from MedAutoencoderLib.io.volumes import volume_suffix


def pending_path(target: Path) -> Path:
    """The hidden name a file is written under until its set is complete (same folder, same format suffix)."""
    return target.with_name(f".{target.name}.pending{volume_suffix(target) or target.suffix}")


class PendingOutputs:
    """Files of one volume, each written by ``writer`` under :func:`pending_path`. Once :meth:`close` says that
    all are submitted, the set settles as soon as its last write ends, on a writer thread (never interrupted by a
    signal midway): every file renamed to its own name, or, when a write failed or the set was discarded, every
    file removed. Exactly one caller settles it (claimed under the lock)."""

    def __init__(self, writer: Executor) -> None:
        self._writer = writer
        self._lock = threading.Lock()
        self._writes: List[Tuple[Future, Path]] = []
        self._closed = False
        self._keep = True
        self._settling = False
        self._settled = threading.Event()
        self._error: Optional[BaseException] = None

    def submit(self, target: Path, write: Callable[[Path], object]) -> None:
        """Start ``write(path)`` on the writer for the file that will be ``target`` (its folder made when missing:
        ``write`` writes straight to the hidden name)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        future = self._writer.submit(write, pending_path(target))
        with self._lock:
            self._writes.append((future, target))
        future.add_done_callback(self._settle_if_written)

    def close(self) -> None:
        """No more files: the set gets its names as soon as all are written."""
        with self._lock:
            self._closed = True
        self._settle_on_writer()  # (when all are written already; else the last write's callback settles it)

    def discard(self) -> None:
        """Remove the set's files once their writes end (this waits for them)."""
        with self._lock:
            self._keep, self._closed = False, True
        self.join()

    def join(self) -> None:
        """Wait until the set has settled (renamed or removed). Waits for the writes themselves, so that a set
        settles also when an interruption came between a write's start and its done callback."""
        if self._settled.is_set():
            return
        with self._lock:
            futures = [future for future, _ in self._writes]
        for future in futures:
            if not future.cancelled():
                future.exception()  # waits for it to end
        self._settle_on_writer()
        self._settled.wait()

    def wait(self) -> None:
        """:meth:`join`, then raise why its files were not given their names, if a write or a rename failed (an
        :class:`OutputLocationError` naming the file)."""
        self.join()
        if self._error is not None:
            raise self._error

    def _settle_on_writer(self) -> None:
        """Settle the set on a writer thread, if it is complete and nobody settles it yet: a signal handled on the
        main thread (Ctrl-C, SIGTERM) could interrupt the renames midway and leave the set half renamed."""
        try:
            self._writer.submit(self._settle_if_written)
        except RuntimeError:  # the writer has shut down, after every write and its callback ended: here, then
            self._settle_if_written()

    def _settle_if_written(self, _: object = None) -> None:
        with self._lock:
            if not self._closed or self._settling or not all(future.done() for future, _ in self._writes):
                return
            self._settling = True
            writes, keep = list(self._writes), self._keep
        renamed = 0
        try:
            failed = next(((future, target) for future, target in writes
                           if future.cancelled() or future.exception() is not None), None)
            if failed is not None:
                error = CancelledError() if failed[0].cancelled() else failed[0].exception()
                self._error = _write_error(failed[1], error, "could not be written")
            elif keep:
                renamed = self._rename(writes)
        except BaseException:  # a defect, or an interruption while settling on the main thread after a shutdown
            self._error = OutputLocationError("interrupted while these outputs were given their names: "
                                              + ", ".join(str(target) for _, target in writes))
            raise
        finally:
            try:
                for _, target in writes[renamed:]:  # what was not given its name is removed, never left hidden
                    _remove_quietly(pending_path(target))
            finally:
                self._settled.set()

    def _rename(self, writes: List[Tuple[Future, Path]]) -> int:
        """Give each file its name; returns how many were (all, unless one failed: its error is kept)."""
        for index, (_, target) in enumerate(writes):
            try:
                os.replace(pending_path(target), target)
            except OSError as exc:  # e.g. on Windows, a file that another program holds open
                done = ", ".join(t.name for _, t in writes[:index])
                self._error = _write_error(target, exc, "could not be replaced" + (
                    f" ({done} of the same volume had been already)" if done else ""))
                return index
        return len(writes)


def _remove_quietly(path: Path) -> None:
    """Remove a temporary file if it is there; one that cannot be removed (held open on Windows) stays, rather
    than leave its set unsettled and the detection waiting for ever."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _write_error(target: Path, error: BaseException, what: str) -> OutputLocationError:
    """An error naming the file the user asked for (not its temporary name) and the system's reason."""
    if isinstance(error, OSError) and error.strerror:
        reason = error.strerror
    else:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[-1]
    return OutputLocationError(f"{target}: {what}: {reason}")

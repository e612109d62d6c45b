"""Volumes of a batch read and brought onto the model grid ahead of the network, in worker threads.

Why: in a cohort batch each volume is read, registered to the brain template and resampled (about 1 s of
SimpleITK work) before a network that takes 0.03 s on a GPU; done one after the other, the GPU waits for the CPU
almost all the time. SimpleITK and NumPy release the GIL, so threads preparing the next volumes run on the cores
that the current volume's network and scoring leave idle. Results are handed out in input order, each with its
own failure at its own place, so a batch reports and stops exactly as one run volume by volume would. On a
2-core machine it costs time (batches of 6 volumes in interleaved processes, medians of 3: 2.16 s per volume one
after the other, 2.50 s with one volume ahead, as the network's and the registration's threads contend for the two
cores; benchmarks/results/speed_cpu_2core.txt), so it is asked for (``detect --prepare-ahead N``), not the
default.
(``concurrent.futures.Executor.map`` submits every item at once: unbounded memory, and no way to cancel what
has not started when the batch stops; MONAI's ``ThreadDataLoader`` is for training batches, not for this.)
"""
from __future__ import annotations

import contextlib
from collections import deque
from concurrent.futures import Future
from typing import Callable, Deque, Iterator, Sequence, TypeVar

from MedAutoencoderLib.runtime.threads import WaitingThreadPool

Item = TypeVar("Item")
Result = TypeVar("Result")


def _run_now(prepare: Callable[[Item], Result], item: Item) -> "Future[Result]":
    """A finished future holding ``prepare(item)`` or its exception (no read-ahead: depth 0)."""
    future: "Future[Result]" = Future()
    try:
        future.set_result(prepare(item))
    except Exception as exc:  # a cancel (KeyboardInterrupt, BaseException) propagates at once
        future.set_exception(exc)
    return future


@contextlib.contextmanager
def prepared_in_order(items: Sequence[Item], prepare: Callable[[Item], Result],
                      depth: int) -> Iterator[Iterator["Future[Result]"]]:
    """An iterator of futures of ``prepare(item)``, one per item in order, with up to ``depth`` items being
    prepared ahead of the one taken last (``depth`` 0: each prepared when it is taken, in the caller's thread).
    The caller should take each future's result and drop the future, so that a volume is freed once used.

    On the way out, also when the caller stops early or is interrupted, preparations not started are cancelled,
    those running are waited for (no thread outlives the batch), and the results not taken are released."""
    if depth <= 0:
        yield (_run_now(prepare, item) for item in items)
        return
    executor = WaitingThreadPool(max_workers=depth, thread_name_prefix="prepare")
    queued: Deque["Future[Result]"] = deque()

    def futures() -> Iterator["Future[Result]"]:
        for item in items:
            queued.append(executor.submit(prepare, item))
            if len(queued) > depth:  # the one handed out, and depth more ahead of it
                yield queued.popleft()
        while queued:
            yield queued.popleft()

    handed_out = futures()
    try:
        yield handed_out
    finally:
        handed_out.close()
        try:  # a second interrupt meanwhile is raised after the wait (MedAutoencoderLib.runtime.threads)
            executor.shutdown(wait=True, cancel_futures=True)
        finally:
            queued.clear()

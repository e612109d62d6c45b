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
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable, Deque, Iterable, Iterator, Optional, Sequence, TypeVar

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


def _wait_for(futures: Iterable["Future[Result]"]) -> None:
    """Wait until every future is done, also when a second interrupt (Ctrl-C twice, SIGTERM after Ctrl-C) arrives
    meanwhile: the wait is resumed and the first such interrupt raised after it. (The executor's own wait joins
    its threads, and on Python 3.11 an interrupted ``Thread.join`` marks a running thread as ended, bpo-45274, so
    that a second join returns at once while it still runs.)"""
    pending = [future for future in futures if not future.done()]  # wait() never counts a cancelled one as done
    interrupt: Optional[BaseException] = None
    while pending:
        try:
            wait(pending)
        except BaseException as exc:  # resumed, then raised below
            interrupt = interrupt or exc
        pending = [future for future in pending if not future.done()]
    if interrupt is not None:
        raise interrupt


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
    executor = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="prepare")
    queued: Deque["Future[Result]"] = deque()
    submitted: "weakref.WeakSet[Future[Result]]" = weakref.WeakSet()  # those running are held by the executor

    def futures() -> Iterator["Future[Result]"]:
        for item in items:
            queued.append(executor.submit(prepare, item))
            submitted.add(queued[-1])
            if len(queued) > depth:  # the one handed out, and depth more ahead of it
                yield queued.popleft()
        while queued:
            yield queued.popleft()

    handed_out = futures()
    try:
        yield handed_out
    finally:
        handed_out.close()
        executor.shutdown(wait=False, cancel_futures=True)
        try:
            _wait_for([*submitted, *queued])
        finally:  # also when a second interrupt is raised after the wait
            executor.shutdown(wait=True)  # their threads end as soon as their last preparation is done
            queued.clear()

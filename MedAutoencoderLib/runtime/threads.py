"""A thread pool that, on the way out, waits for every piece of work it was given, also when interrupted.

Why: ``ThreadPoolExecutor.shutdown(wait=True)`` joins its threads, and on Python 3.11 a ``Thread.join``
interrupted by a signal (Ctrl-C, or SIGTERM, which the command line turns into a cancel) marks a thread that still
runs as ended (bpo-45274). Nothing waits for it any more: the process went on to exit while a writer thread was
still inside SimpleITK, and when that thread then asked for the interpreter, Python ended it with ``pthread_exit``,
whose unwinding a C++ ``catch (...)`` in SimpleITK's wrapper swallowed: the process aborted (``FATAL: exception not
rethrown``, exit 134) instead of exiting with its cancel status, in 3 of 13 SIGTERMs sent as a batch's last volume
was written. Here the wait is on the futures, resumed after an interrupt, which is raised once all are done.
"""
from __future__ import annotations

import weakref
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterable, Optional


def wait_for(futures: Iterable[Future]) -> None:
    """Wait until every future is done, also when an interrupt arrives meanwhile: the wait is resumed and the
    first such interrupt raised after it."""
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


class WaitingThreadPool(ThreadPoolExecutor):
    """``ThreadPoolExecutor`` whose ``shutdown(wait=True)`` (and so its ``with`` block) waits for all its work
    with :func:`wait_for` before joining its threads, which by then only have to return."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._submitted: "weakref.WeakSet[Future]" = weakref.WeakSet()  # running and queued ones are held alive

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        future = super().submit(fn, *args, **kwargs)
        self._submitted.add(future)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=False, cancel_futures=cancel_futures)
        if not wait:
            return
        try:
            wait_for(list(self._submitted))
        finally:  # also when an interrupt is raised after the wait
            super().shutdown(wait=True)

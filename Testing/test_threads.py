"""The waiting thread pool (MedAutoencoderLib.runtime.threads): no thread outlives it, also when its wait is interrupted."""
from __future__ import annotations

import signal
import threading
import time

import pytest

from MedAutoencoderLib.runtime.threads import WaitingThreadPool


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="Windows has no pthread_kill")
def test_an_interrupt_during_the_final_wait_still_waits_for_every_piece_of_work():
    """A SIGTERM or Ctrl-C while a batch's last outputs were written interrupted the pool's join: on Python 3.11
    the writer thread, still inside SimpleITK, was taken for ended (bpo-45274), the process exited under it and
    aborted ("FATAL: exception not rethrown", exit 134)."""
    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job ignores SIGINT
    started, finished = threading.Event(), []

    def write() -> None:
        started.set()
        time.sleep(0.6)
        finished.append(True)

    # to the main thread, as a terminal's Ctrl-C: a signal raised in another thread would not wake its wait
    interrupt = threading.Timer(0.2, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
    try:
        with pytest.raises(KeyboardInterrupt):
            with WaitingThreadPool(max_workers=2, thread_name_prefix="waited") as pool:
                pool.submit(write)
                started.wait(timeout=5)
                interrupt.start()  # arrives while the with block's exit waits for the write
    finally:
        interrupt.cancel()
        signal.signal(signal.SIGINT, previous_handler)
    assert finished == [True]
    assert not [t for t in threading.enumerate() if t.name.startswith("waited")]


def test_it_runs_work_and_shuts_down_like_a_thread_pool():
    with WaitingThreadPool(max_workers=2) as pool:
        squares = [pool.submit(pow, n, 2) for n in range(5)]
    assert [f.result() for f in squares] == [0, 1, 4, 9, 16]
    pool.shutdown()  # again: nothing left to wait for
    with pytest.raises(RuntimeError):
        pool.submit(pow, 2, 2)
    blocked = threading.Event()
    pool = WaitingThreadPool(max_workers=1)
    first = pool.submit(blocked.wait, 5)
    later = pool.submit(pow, 3, 2)
    threading.Timer(0.1, blocked.set).start()
    pool.shutdown(cancel_futures=True)  # the queued one is cancelled, the running one waited for
    assert first.result() is True and later.cancelled()

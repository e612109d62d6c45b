"""A cohort's detection split over processes, GPUs, nodes or a cluster's job array.

``detect --shard K/N`` takes every N-th input of the expanded input list (files as given, folders and globs
sorted, as a single run orders them), starting at the K-th: shards count from 1 (``1/4`` to ``4/4``), as a
SLURM job array started with ``--array=1-4`` numbers its tasks. Launched by ``torchrun`` (``RANK`` and
``WORLD_SIZE`` set), each process takes its rank's share the same way (rank r: every WORLD_SIZE-th input from
the (r+1)-th); with ``--shard`` too, the ranks split the shard's share among themselves. Every share writes
exactly the files a single run writes for its inputs, into the same output folder, so the shards together
write what one run does.

Under ``torchrun`` the processes finish together: one whose share ended with failures (``--keep-going``, or a
volume that stopped it) waits for the others before it exits, since ``torchrun`` stops every other process as
soon as one exits with an error. The processes talk only for that (gloo, which every machine has); detection
itself needs no communication.
"""
from __future__ import annotations

import argparse
import contextlib
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator, List, Optional, Sequence, TypeVar

import torch.distributed as dist

from MedAutoencoderLib.training.distributed import DistributedContext
from MedAutoencoderLib.errors import Cancelled, ConfigurationError, MedAutoencoderError

T = TypeVar("T")

# How long a process that has finished its share waits for the others under torchrun: a cohort's shares can
# differ by hours (one volume of a share may be far larger), and the wait costs nothing.
_WAIT_FOR_OTHER_RANKS = timedelta(days=7)


@dataclass(frozen=True)
class Shard:
    """The ``index``-th of ``count`` shares of a list (``index`` from 1)."""

    index: int = 1
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise ConfigurationError(f"shard {self.index}/{self.count}: give K/N with 1 <= K <= N (shards count "
                                     "from 1; with a job array numbered from 0, pass the task id + 1)")

    def share(self, items: Sequence[T]) -> List[T]:
        """Every ``count``-th item, starting at the ``index``-th."""
        return list(items[self.index - 1::self.count])

    def within(self, inner: "Shard") -> "Shard":
        """The share ``inner`` takes of this shard's share, as one shard of the whole list."""
        return Shard(index=self.index + (inner.index - 1) * self.count, count=self.count * inner.count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"K/N"`` as a :class:`Shard`; an argparse type.

    Raises:
        argparse.ArgumentTypeError: not two whole numbers K/N with 1 <= K <= N.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"--shard must be K/N (this process's share K of N, from 1), not {text!r}")
    try:
        return Shard(int(match.group(1)), int(match.group(2)))
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def process_shard(shard: Optional[Shard], context: DistributedContext) -> Optional[Shard]:
    """This process's share of the inputs: ``shard`` (None: all of them) and, under torchrun, its rank's part
    of it."""
    if not context.launched or context.world_size == 1:
        return shard
    by_rank = Shard(context.rank + 1, context.world_size)
    return by_rank if shard is None else shard.within(by_rank)


@contextlib.contextmanager
def ranks_finish_together(context: DistributedContext) -> Iterator[None]:
    """Under torchrun, every process leaves this block only when all have reached its end, whether their share
    succeeded or ended with an error for the user (a cancel or a defect leaves at once); elsewhere it does
    nothing."""
    if not context.launched or context.world_size == 1:
        yield
        return
    dist.init_process_group(backend="gloo", timeout=_WAIT_FOR_OTHER_RANKS)
    try:
        yield
    except MedAutoencoderError as exc:
        if not isinstance(exc, Cancelled):
            _leave_together()
        raise  # a cancel (SIGTERM, Ctrl-C) or a defect ends this process at once, and torchrun stops the others
    _leave_together()


def _leave_together() -> None:
    dist.barrier()
    dist.destroy_process_group()

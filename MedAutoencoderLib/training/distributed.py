"""Data-parallel training over several GPUs and machines, launched by ``torchrun``.

``torchrun`` starts one process per GPU and tells each its place through the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``). A training process that finds these joins the process group (NCCL on GPUs,
gloo on CPUs), trains a :class:`~torch.nn.parallel.DistributedDataParallel` copy of the network on its own
share of the samples, and agrees with the others on everything that decides the run: losses are averaged over
all processes, and whether to stop is decided by rank 0 alone, so that no process stops while the others wait
for it. Without these variables every helper here is a no-op and training runs as a single process.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator, Mapping, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from MedAutoencoderLib.errors import DeviceError
from MedAutoencoderLib.runtime.device import resolve_device
from MedAutoencoderLib.runtime.launch import launched_by_torchrun

T = TypeVar("T")

_RANK_SEED_STRIDE = 1000  # rank r draws from seed + 1000 r: apart from the seed + 1 of the validation noise


@dataclass(frozen=True)
class DistributedContext:
    """This process's place among the training processes (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    launched: bool = False  # by torchrun: a process group is to be joined

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the model file, calibrates and reports progress; the others stay silent."""
        return self.rank == 0

    def rank_seed(self, seed: int) -> int:
        """A seed of its own for this rank's random augmentation and noise, so ranks do not draw alike."""
        return seed + _RANK_SEED_STRIDE * self.rank

    def mean_over_ranks(self, total: float, count: int, device: torch.device) -> float:
        """``sum(total) / sum(count)`` over all processes: the loss of the whole (sharded) data set."""
        if not self.launched:
            return total / max(count, 1)
        summed = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
        dist.all_reduce(summed)
        return float(summed[0] / summed[1].clamp(min=1.0))

    def decided_by_rank_zero(self, value: T) -> T:
        """Rank 0's ``value`` on every rank: stop decisions depend on clocks, files and signals that ranks
        see at different moments, and a rank that stops alone would leave the others waiting forever."""
        if not self.launched:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def context_from_environment(environment: Mapping[str, str] = os.environ) -> DistributedContext:
    """The context ``torchrun`` describes in the environment; a single process when it is absent."""
    if not launched_by_torchrun(environment):
        return DistributedContext()
    return DistributedContext(rank=int(environment["RANK"]), local_rank=int(environment["LOCAL_RANK"]),
                              world_size=int(environment["WORLD_SIZE"]), launched=True)


def training_device(requested: str, context: DistributedContext) -> torch.device:
    """The requested device; under torchrun a GPU request means this process's GPU, ``cuda:LOCAL_RANK``."""
    device = resolve_device(requested)
    if not context.launched or device.type != "cuda":
        return device
    if context.local_rank >= torch.cuda.device_count():
        raise DeviceError(f"local rank {context.local_rank} has no GPU of its own: only "
                          f"{torch.cuda.device_count()} visible; start at most that many processes per node")
    return torch.device("cuda", context.local_rank)


@contextlib.contextmanager
def process_group(context: DistributedContext, device: torch.device) -> Iterator[None]:
    """Join the training processes for the duration of a run (NCCL between GPUs, gloo between CPUs)."""
    if not context.launched:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        if dist.is_initialized():  # not left together (an error on some rank): tear down alone
            dist.destroy_process_group()


def leave_together(context: DistributedContext) -> None:
    """All ranks leave the process group at the same point, where every rank is known to be: a rank that tears
    its connections down while another still holds them aborted now and then ('terminate called without an
    active exception' from gloo, about one run in six here)."""
    if context.launched and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def parallel_network(network: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    """The module to train: under torchrun a DDP wrapper that averages gradients (and starts every rank from
    rank 0's weights); otherwise ``network`` itself. Checkpoints always store the unwrapped ``network``."""
    if not context.launched:
        return network
    return DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)

"""3D convolutions that PyTorch's CPU heuristic leaves to its im2col kernel, run by oneDNN instead.

PyTorch sends a float32 CPU convolution to oneDNN only when the input's first four sizes (N x C x D x H) exceed
20480 or the batch holds several volumes; the brain extractor's one-volume layers fall under it (its first layer,
one channel of 96 x 160 x 160, unfolds 27 copies of the scan). By oneDNN the extractor's network and softmax take
61 instead of 71 ms on the benchmark volume's 2 mm grid and 28 instead of 53 ms on an IXI head (2-core AMD EPYC,
``benchmarks/results/extractor_time_2core_onednn.txt``). PyTorch has no switch for this choice, so
:class:`OneDnnConv3d` calls the operator it would call, ``aten::mkldnn_convolution``, itself: on x86-64 CPUs only
(the library behind it is tuned there; elsewhere PyTorch's own choice stands).
"""
from __future__ import annotations

import platform

import torch
from torch import nn

_X86_64 = platform.machine().lower() in ("x86_64", "amd64")


class OneDnnConv3d(nn.Conv3d):
    """A ``Conv3d`` (same parameters and state-dict names) that runs a batch of float32 volumes on the CPU by
    oneDNN, channels-last as oneDNN wants them; anything else (GPUs, other types, unbatched inputs, autocast,
    oneDNN switched off by ``torch.backends.mkldnn.flags``) as ``Conv3d`` does. The same function: its results
    differ from the im2col kernel's by float rounding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 5 or self.weight.device.type != "cpu" \
                or not torch.backends.mkldnn.enabled or _cpu_autocast():
            return super().forward(x)
        return torch.ops.aten.mkldnn_convolution(x.contiguous(memory_format=torch.channels_last_3d), self.weight,
                                                 self.bias, self.padding, self.stride, self.dilation, self.groups)


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch before 2.4 asks per device
        return torch.is_autocast_cpu_enabled()


def convolutions_by_onednn(module: nn.Module) -> nn.Module:
    """Make ``module``'s zero-padded ``Conv3d`` layers :class:`OneDnnConv3d`, in place (their class only: weights
    and state-dict names stay). Does nothing where PyTorch has no oneDNN or the CPU is not x86-64.

    Args:
        module: a network whose 3D convolutions should run by oneDNN on CPUs.

    Returns:
        ``module``.
    """
    if not (_X86_64 and torch.backends.mkldnn.is_available()):
        return module
    for layer in module.modules():
        if type(layer) is nn.Conv3d and layer.padding_mode == "zeros" and isinstance(layer.padding, tuple):
            layer.__class__ = OneDnnConv3d
    return module

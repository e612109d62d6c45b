"""3D convolutions that PyTorch's CPU heuristic leaves to its im2col kernel, run by oneDNN instead.

PyTorch sends a float32 CPU convolution to oneDNN only when the input's first four sizes (N x C x D x H) exceed
20480 or the batch holds several volumes; the brain extractor's one-volume layers fall under it (its first layer,
one channel of 96 x 160 x 160, unfolds 27 copies of the scan), and oneDNN runs them 1.3x faster in all (the
network and its softmax 69 -> 55 ms on the benchmark volume, 2-core CPU). PyTorch has no switch for this choice,
so :func:`convolutions_by_onednn` calls the operator it would call, ``aten::mkldnn_convolution``, itself.
"""
from __future__ import annotations

import torch
from torch import nn


class OneDnnConv3d(nn.Module):
    """``conv`` run by oneDNN on CPU float32 inputs (channels-last, as oneDNN wants them); by ``conv`` itself
    elsewhere (GPUs, other types). The same function: results differ from the im2col kernel's by float rounding."""

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if x.device.type != "cpu" or x.dtype != torch.float32 or c.weight.device.type != "cpu":
            return c(x)
        return torch.ops.aten.mkldnn_convolution(x.contiguous(memory_format=torch.channels_last_3d), c.weight, c.bias,
                                                 c.padding, c.stride, c.dilation, c.groups)


def convolutions_by_onednn(module: nn.Module) -> nn.Module:
    """Wrap ``module``'s zero-padded ``Conv3d`` layers in :class:`OneDnnConv3d`, in place, for inference (the
    state dict's names change: save the module before). Does nothing where PyTorch has no oneDNN.

    Args:
        module: a network whose 3D convolutions should run by oneDNN on CPUs.

    Returns:
        ``module``.
    """
    if not torch.backends.mkldnn.is_available():
        return module
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv3d and child.padding_mode == "zeros" and isinstance(child.padding, tuple):
                setattr(parent, name, OneDnnConv3d(child))
    return module

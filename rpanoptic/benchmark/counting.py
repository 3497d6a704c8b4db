"""Count what a piece of code does, without timing it: FLOPs, operators dispatched, and the FLOPs
of convolutions whose kernel is a feature map.

:class:`OperationCounter` is a ``TorchDispatchMode``: every ATen operator that runs inside it,
forward and backward (the autograd engine carries the mode into backward), is seen once with its
real arguments. FLOPs come from PyTorch's own formulas (``torch.utils.flop_counter``, a
multiply-add counted as 2 FLOPs; convolutions, matrix products and attention; element-wise
operators count 0 there). Operators are counted as launched kernels: every operator that is not
a view or a metadata change, so that the count is about one kernel per operator in eager mode
on a GPU (a fused or compiled region launches fewer).
"""

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

__all__ = ["OperationCounter"]

_CONVOLUTIONS = {
    torch.ops.aten.convolution.default: 1,
    torch.ops.aten.convolution_backward.default: 2,
}
_NOT_KERNELS = {
    "aten::detach",
    "aten::alias",
    "aten::lift_fresh",
    "aten::_unsafe_view",
    "aten::view",
    "aten::t",
    "aten::expand",
    "aten::permute",
    "aten::unsqueeze",
    "aten::squeeze",
    "aten::reshape",
    "aten::slice",
    "aten::select",
    "aten::as_strided",
    "aten::transpose",
    "aten::split",
    "aten::unbind",
    "aten::chunk",
    "aten::empty_like",
    "aten::empty",
    "aten::empty_strided",
    "aten::_local_scalar_dense",
    "aten::is_same_size",
    "aten::set_",
    "prim::device",
    "aten::sym_size",
    "aten::sym_stride",
    "aten::sym_numel",
}


class OperationCounter(TorchDispatchMode):
    """``with OperationCounter() as c: step()``; then ``c.flops``, ``c.kernels``,
    ``c.map_kernel_flops`` (FLOPs of convolutions whose weight has a spatial side above
    ``map_side``: a feature map used as a kernel, as in a convolution's double backward) and
    ``c.by_operator`` (a Counter of FLOPs per operator name)."""

    def __init__(self, map_side: int = 7):
        super().__init__()
        self.map_side = map_side
        self.flops = 0
        self.kernels = 0
        self.map_kernel_flops = 0
        self.by_operator: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func._schema.name
        if name not in _NOT_KERNELS and not getattr(func, "is_view", False):
            self.kernels += 1
        packet = func._overloadpacket
        if packet in flop_registry:
            flops = int(flop_registry[packet](*args, **kwargs, out_val=out))
            self.flops += flops
            self.by_operator[name] += flops
            weight_at = _CONVOLUTIONS.get(func)
            if weight_at is not None and max(args[weight_at].shape[2:]) > self.map_side:
                self.map_kernel_flops += flops
        return out

"""BatchNorm with statistics over every process, differentiable to any order.

Training a recurrence with C-RBP differentiates the penalty's vector-Jacobian product again
(a double backward). Through a synchronised BatchNorm that double backward must cross the
processes as well. torch's SyncBatchNorm accepts only GPU tensors, and the all-reduce in
Detectron2's NaiveSyncBatchNorm (fvcore's) is differentiable only once, so the penalty's
gradient would miss the coupling through the shared statistics. This one reduces the batch
moments with ``torch.distributed.nn.functional.all_reduce``, whose backward is itself an
all-reduce recorded by autograd, on any backend (NCCL or gloo).
"""

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce

__all__ = ["SyncBatchNorm2d"]


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class SyncBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode statistics are the mean and (biased) variance of
    the whole batch across all processes of the default group, assuming every process holds
    the same number of samples. In eval mode, or in a single process, it is ``nn.BatchNorm2d``.
    Running statistics follow BatchNorm's rule (unbiased variance, ``momentum``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        world = _world_size()
        if not self.training or world == 1:
            return super().forward(x)
        self._check_input_dim(x)
        channels = x.shape[1]
        moments = torch.cat([x.mean(dim=(0, 2, 3)), (x * x).mean(dim=(0, 2, 3))])
        mean, mean_sq = (all_reduce(moments) / world).split(channels)
        var = mean_sq - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                count = x.numel() // channels * world
                momentum = 0.1 if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * count / max(count - 1, 1), momentum)
                self.num_batches_tracked.add_(1)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        shift = -mean * scale + (self.bias if self.affine else 0)
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)

"""Helpers shared by the recurrence units: per-sample reductions and batch-norm bookkeeping.

With GroupNorm (or no norm) a cell treats each sample independently, so its Jacobian is block
diagonal over the batch and per-sample decisions (halting, Neumann-series safeguards, spectral
radius) are exact. A BatchNorm in training mode couples the samples: then the whole batch is
treated as one group.
"""

from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["batch_coupled", "as_groups", "group_norm", "expand_as", "frozen_running_stats"]


def batch_coupled(module: nn.Module) -> bool:
    """True when ``module`` mixes samples of a batch (a BatchNorm in training mode)."""
    return any(isinstance(m, _BatchNorm) and m.training for m in module.modules())


def as_groups(t: torch.Tensor, coupled: bool) -> torch.Tensor:
    """t as (groups, elements): one row per sample (B, ...), or a single row when coupled."""
    return t.reshape(1, -1) if coupled else t.reshape(t.shape[0], -1)


def group_norm(t: torch.Tensor, coupled: bool) -> torch.Tensor:
    """L2 norm per sample, shape (B,); or over the whole tensor, shape (1,), when coupled."""
    return torch.linalg.vector_norm(as_groups(t, coupled), dim=1)


def expand_as(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Reshape a per-group vector (B,) or (1,) so that it broadcasts against t (B, ...)."""
    return v.reshape(v.shape + (1,) * (t.dim() - 1))


@contextmanager
def frozen_running_stats(module: nn.Module):
    """Run ``module`` again (e.g. a recomputation in backward) without updating BN statistics."""
    saved = [
        (buf, buf.clone())
        for m in module.modules()
        if isinstance(m, _BatchNorm) and m.training
        for buf in m.buffers()
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)

"""Pathfinder models: the paper's recurrent one (a learned filter bank, one hGRU recurrence with
large kernels, a max-pooled read-out) and feed-forward baselines sharing its stem and read-out.

Every model maps a (B, C, H, W) input in [0, 1] (C = 1: the image; C = 2 for the traced task:
the image and the cue, a disk on the dot to trace from) to (B,) logits of "the dots are
connected" (``readout="label"``, the paper's) or to (B, 1, H, W) logits of "this pixel is on
the path through the cued dot" (``readout="dense"``).
"""

from typing import Optional

import torch
from torch import nn

from rpanoptic.recurrence import HGRUCell, Recurrence

__all__ = ["FeedForwardPathfinder", "HGRUPathfinder", "count_parameters"]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class _Stem(nn.Module):
    """A learned bank of ``channels`` oriented filters (the paper's input layer), normalised
    per image: the hGRU's drive must be O(1) next to its softplus offsets, or the state ignores
    the image (unnormalised, a 2%-bright Pathfinder image gives a drive of about 0.06 and a
    state whose correlation with it was -0.04)."""

    def __init__(self, channels: int, kernel_size: int = 5, in_channels: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, kernel_size, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(1, channels)

    def forward(self, x):
        return torch.relu(self.norm(self.conv(x)))


class _Readout(nn.Module):
    """1x1 conv, global max pool, linear: one logit per image."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 2, 1)
        self.norm = nn.GroupNorm(1, 2)
        self.fc = nn.Linear(2, 1)

    def forward(self, h):
        return self.fc(torch.amax(self.norm(self.conv(h)), dim=(2, 3))).squeeze(1)


def _readout(kind: str, channels: int) -> nn.Module:
    if kind == "label":
        return _Readout(channels)
    if kind == "dense":  # one logit per pixel
        return nn.Conv2d(channels, 1, 1)
    raise ValueError(f"pathfinder: readout={kind!r} is invalid; allowed: 'label' | 'dense'")


class HGRUPathfinder(nn.Module):
    """Stem -> hGRU :class:`~rpanoptic.recurrence.Recurrence` -> read-out.

    Args:
        channels: hGRU channels (the paper uses 25 at 150 px; small is enough here).
        kernel_size: the hGRU's horizontal kernels (odd; large, as the paper's 15 at 150 px).
        timesteps, grad, neumann_steps, lcp_tau, lcp_reduction, lcp_vector, backward_solver: the
            recurrence's (see :class:`~rpanoptic.recurrence.Recurrence`).
        gn_groups: GroupNorm groups of the cell (must divide ``channels``).
        in_channels: 1 (image) or 2 (image and cue).
        readout: "label" (one logit per image) or "dense" (one per pixel).
    """

    def __init__(
        self,
        channels: int = 16,
        kernel_size: int = 7,
        timesteps: int = 8,
        grad: str = "crbp",
        neumann_steps: int = 15,
        lcp_tau: float = 0.9,
        lcp_reduction: str = "mean",
        lcp_vector: str = "ones",
        gn_groups: int = 4,
        stem_kernel: int = 5,
        in_channels: int = 1,
        readout: str = "label",
        backward_solver: str = "neumann",
    ):
        super().__init__()
        self.stem = _Stem(channels, stem_kernel, in_channels)
        cell = HGRUCell(channels, kernel_size, timesteps=timesteps, gn_groups=gn_groups)
        self.recurrence = Recurrence(
            cell,
            timesteps,
            grad=grad,
            neumann_steps=neumann_steps,
            lcp_tau=lcp_tau,
            lcp_reduction=lcp_reduction,
            lcp_vector=lcp_vector,
            backward_solver=backward_solver,
            name="pathfinder.recurrence",
        )
        self.readout = _readout(readout, channels)
        self.state: Optional[torch.Tensor] = None  # the final state of the latest forward

    def forward(self, x):
        h = self.recurrence(self.stem(x))
        self.state = h.detach()
        return self.readout(h)


class _Block(nn.Module):
    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(channels, channels, kernel_size, padding=pad)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding=pad)
        self.norm1, self.norm2 = nn.GroupNorm(4, channels), nn.GroupNorm(4, channels)

    def forward(self, x):
        y = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(x + self.norm2(self.conv2(y)))


class FeedForwardPathfinder(nn.Module):
    """Stem -> ``blocks`` residual blocks of two ``kernel_size`` convolutions -> read-out: the
    recurrent model with the hGRU replaced by convolution layers. ``channels`` and ``blocks``
    set its size (equal to or several times the hGRU model's parameters)."""

    def __init__(
        self,
        channels: int = 16,
        kernel_size: int = 3,
        blocks: int = 4,
        stem_kernel: int = 5,
        in_channels: int = 1,
        readout: str = "label",
    ):
        super().__init__()
        self.stem = _Stem(channels, stem_kernel, in_channels)
        self.blocks = nn.Sequential(*[_Block(channels, kernel_size) for _ in range(blocks)])
        self.readout = _readout(readout, channels)

    def forward(self, x):
        return self.readout(self.blocks(self.stem(x)))

"""Small cells shared by the recurrence tests."""

import torch
from torch import nn

from rpanoptic.recurrence import HGRUCell


class LinearCell(nn.Module):
    """h' = a * h + b * x, with scalar parameters a, b: J = a I, exact answers are closed-form."""

    def __init__(self, a: float, b: float = 1.0):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a), dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(float(b), dtype=torch.float64))

    def forward(self, x, h):
        return self.a * h + self.b * x


def small_hgru(channels=2, norm="", timesteps=3, dtype=torch.float64, seed=0, **kw):
    """A tiny hGRU cell (strongly contractive at initialisation)."""
    torch.manual_seed(seed)
    return HGRUCell(channels, norm=norm, timesteps=timesteps, gn_groups=1, **kw).to(dtype)


def drive(shape=(2, 2, 5, 5), dtype=torch.float64, seed=1, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype).requires_grad_(requires_grad)


class MatrixCell(nn.Module):
    """h' = A h + x over the channels at each position, with a (C, C) parameter A: the
    Jacobian of each sample is A (times the identity over positions), so its spectrum, left
    eigenvectors and the LCP of any vector have closed forms."""

    def __init__(self, matrix):
        super().__init__()
        self.matrix = nn.Parameter(torch.as_tensor(matrix, dtype=torch.float64).clone())

    def forward(self, x, h):
        return torch.einsum("ij,bjhw->bihw", self.matrix, h) + x

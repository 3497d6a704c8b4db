"""Convergence diagnostics of a recurrence at a state h: distance to a fixed point, contraction.

- Fixed-point residual: r = ||F(x, h) - h|| / ||h||, per sample. Small r means the forward
  iteration has converged, which RBP assumes.
- Spectral radius of J = dF/dh at h, estimated by power iteration with vector-Jacobian products
  (J^T has the same spectrum): v <- v J / ||v J||. The estimate is the mean growth rate
  exp(mean log(||v_k J|| / ||v_k||)) over the second half of the iterations, which converges to
  |lambda_max| also when the dominant eigenvalues are a complex pair (where the one-step ratio
  oscillates). It is an estimate: it approaches |lambda_max| from the chosen start as the
  number of iterations grows. Below 1 means F is locally contractive and RBP's series converges.

Both return tensors on the state's device, per sample (B,), or (1,) when the cell couples the
samples of a batch (BatchNorm in training mode); neither updates BatchNorm statistics.
"""

from typing import Optional

import torch
from torch import nn

from ._batch import batch_coupled, expand_as, frozen_running_stats, group_norm

__all__ = ["fixed_point_residual", "spectral_radius"]


@torch.no_grad()
def fixed_point_residual(cell: nn.Module, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """||F(x, h) - h|| / ||h|| per sample (B,). x, h: (B, C, H, W)."""
    coupled = batch_coupled(cell)
    with frozen_running_stats(cell):
        step = cell(x, h) - h
    return group_norm(step, coupled) / group_norm(h, coupled).clamp_min(1e-12)


def spectral_radius(
    cell: nn.Module,
    x: torch.Tensor,
    h: torch.Tensor,
    iters: int = 20,
    seed: Optional[int] = 0,
) -> torch.Tensor:
    """Power-iteration estimate of the spectral radius of dF/dh at (x, h), per sample (B,).

    Args:
        cell: the step F, ``cell(x, h) -> h_next``.
        x, h: input and state (B, C, H, W), e.g. the final state of a forward pass.
        iters: number of vector-Jacobian products (>= 2).
        seed: seed of the random start vector (None: the global generator).
    """
    if iters < 2:
        raise ValueError(f"spectral_radius: iters must be >= 2, got {iters}.")
    coupled = batch_coupled(cell)
    gen = None
    if seed is not None:
        gen = torch.Generator(device=h.device).manual_seed(seed)
    v = torch.randn(h.shape, generator=gen, device=h.device, dtype=h.dtype)
    v = v / expand_as(group_norm(v, coupled).clamp_min(1e-30), v)
    log_growth = torch.zeros_like(group_norm(v, coupled))
    counted = 0
    with torch.enable_grad(), frozen_running_stats(cell):
        h_in = h.detach().requires_grad_()
        out = cell(x.detach(), h_in)
        for k in range(iters):
            (w,) = torch.autograd.grad(out, h_in, v, retain_graph=True)
            size = group_norm(w, coupled).clamp_min(1e-30)
            if k >= iters // 2:
                log_growth += size.log()  # ||v|| = 1, so this is log(||v J|| / ||v||)
                counted += 1
            v = w / expand_as(size, w)
    return (log_growth / counted).exp()

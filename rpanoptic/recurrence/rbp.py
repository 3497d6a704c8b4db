"""Recurrent back-propagation (RBP): the gradient of a fixed point by a truncated Neumann series.

Let h* = F(x, h*; w) be the state a recurrence reaches, J = dF/dh and v = dL/dh* the gradient
that arrives from the loss. The implicit function theorem gives

    dL/dw = g dF/dw,   dL/dx = g dF/dx,   g = v (I - J)^-1 = sum_{k>=0} v J^k,

and RBP truncates the series at K terms after the first: g_K = sum_{k=0..K} v J^k, each term a
vector-Jacobian product (one backward pass through one step). F and J are evaluated at the
last step of the forward pass (x, h_{N-1}) -> h_N, which approximates the fixed point as well
as the forward iteration converged.

Safeguard (a series that grows instead of shrinking). The series converges only when J is a
contraction at h*. Each term is checked on the device, with no host synchronisation: for each
sample (for the whole batch when the cell couples samples, see ``_batch``), a term whose norm
is not finite or exceeds the norm of the first term v is rejected; the partial sum before it is
kept, no further terms are added for that sample, and the sample is counted as a *fallback*.
Both the test and the optional early stop (``rtol``: stop adding terms once
||v J^k|| <= rtol ||g_k||) compare norms of quantities that are linear in v, so scaling the
loss (as mixed-precision loss scaling does) scales the gradient and changes no decision.

Memory. :class:`ImplicitStep` keeps only x and h_{N-1} for backward and recomputes the last
step there (and, in C-RBP, the penalty's vector-Jacobian product), so what a recurrence keeps
alive between forward and backward is two state-sized tensors whatever N is, less than the
graph of a single BPTT step.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from ._batch import expand_as, frozen_running_stats, group_norm
from .krylov import gmres_solve
from .lcp import lcp_from_vjp, lcp_penalty, ones_vjp, power_lcp, power_vector
from .phases import phase

__all__ = ["neumann_series", "ImplicitStep", "ImplicitStepOptions", "BACKWARD_SOLVERS"]


def neumann_series(
    h_next: torch.Tensor,
    h: torch.Tensor,
    v: torch.Tensor,
    steps: int,
    rtol: float = 0.0,
    coupled: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """g_K = sum_{k=0..K} v J^k with J = d h_next / d h, by K vector-Jacobian products.

    Args:
        h_next, h: the step's output and input (B, C, H, W); the graph h -> h_next must exist.
        v: the incoming gradient dL/dh_next, shaped like h_next.
        steps: K, the number of terms after the first (K = 0 gives g = v).
        rtol: stop adding terms for a sample once ||v J^k|| <= rtol ||g_k|| (0 disables).
        coupled: treat the batch as one group (see module docstring).

    Returns:
        g (shaped like v), diverged (bool per group: the safeguard fired) and terms (int per
        group: how many terms after the first were added). All stay on v's device.
    """
    g, term = v.clone(), v  # g is accumulated in place
    first = group_norm(v, coupled)
    active = torch.ones_like(first, dtype=torch.bool)
    diverged = torch.zeros_like(active)
    terms = torch.zeros_like(first, dtype=torch.long)
    for _ in range(steps):
        (term,) = torch.autograd.grad(h_next, h, term, retain_graph=True)
        size = group_norm(term, coupled)
        ok = torch.isfinite(size) & (size <= first)
        diverged |= active & ~ok
        active &= ok
        # Masking with where (not a product) also clears inf/nan terms of diverged samples; the
        # masked term feeds the next product, so stopped samples stay at zero.
        term = torch.where(expand_as(active, term), term, 0.0)
        g += term
        terms += active
        if rtol > 0:
            active &= size > rtol * group_norm(g, coupled)
    return g, diverged, terms


BACKWARD_SOLVERS = {"neumann": neumann_series, "gmres": gmres_solve}
"""How the backward turns K vector-Jacobian products into g ~ v (I - J)^-1."""


@dataclass
class ImplicitStepOptions:
    """What :class:`ImplicitStep` needs besides tensors.

    Attributes:
        neumann_steps: K of the truncated series.
        rtol: relative tolerance of the optional early stop (0 disables).
        lcp_tau: tau of the LCP; None when no penalty is computed (plain RBP).
        coupled: whether the cell couples the samples of a batch.
        stats: float tensor [fallbacks, terms, groups] accumulated in place by backward.
        lcp_reduction: "sum" or "mean" over the state's elements (see ``lcp.py``).
        lcp_vector: "ones" (the authors') or "power" (see ``lcp.py``).
        lcp_power_iters: power-iteration steps of the "power" vector.
        solver: "neumann" (the series, as in the paper) or "gmres" (the same K products
            combined by GMRES, see ``krylov.py``).
    """

    neumann_steps: int
    rtol: float
    lcp_tau: Optional[float]
    coupled: bool
    stats: torch.Tensor
    lcp_reduction: str = "sum"
    lcp_vector: str = "ones"
    lcp_power_iters: int = 5
    solver: str = "neumann"


class ImplicitStep(torch.autograd.Function):
    """The last step h_N = F(x, h_{N-1}) of a recurrence, differentiated by RBP.

    ``ImplicitStep.apply(cell, options, x, h_prev, *params) -> (h_next, lcp)``. ``params`` are
    the cell's trainable parameters, passed so that autograd routes their gradients. ``lcp`` is
    the LCP of this step (a scalar) when ``options.lcp_tau`` is set, else a constant zero. No
    gradient flows to ``h_prev``: the fixed point does not depend on where the iteration began.
    """

    @staticmethod
    def forward(ctx, cell, options: ImplicitStepOptions, x, h_prev, *params):
        ctx.set_materialize_grads(False)
        ctx.cell, ctx.options, ctx.params = cell, options, params
        with torch.autocast(x.device.type, enabled=False):
            if options.lcp_tau is None:
                ctx.save_for_backward(x, h_prev)
                h_next = cell(x, h_prev)
                lcp = x.new_zeros(())
                ctx.mark_non_differentiable(lcp)
                return h_next, lcp
            with torch.enable_grad():
                h_in = h_prev.detach().requires_grad_()
                out = cell(x.detach(), h_in)
                tau, reduction, coupled = options.lcp_tau, options.lcp_reduction, options.coupled
                if options.lcp_vector == "power":
                    # The vector is kept for backward, which differentiates the same penalty.
                    v = power_vector(out, h_in, options.lcp_power_iters, coupled)
                    ctx.save_for_backward(x, h_prev, v)
                    lcp = power_lcp(out, h_in, v, tau, reduction, coupled, create_graph=False)
                else:
                    ctx.save_for_backward(x, h_prev)
                    lcp = lcp_from_vjp(ones_vjp(out, h_in, create_graph=False), tau, reduction)
            return out.detach(), lcp.detach()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h, grad_lcp):
        x, h_prev, *power = ctx.saved_tensors
        cell, options = ctx.cell, ctx.options
        needs_x = ctx.needs_input_grad[2]
        # BatchNorm statistics are restored only after the last use of this graph: restoring
        # them in place earlier would invalidate the tensors the graph saved.
        with torch.enable_grad(), torch.autocast(
            x.device.type, enabled=False
        ), frozen_running_stats(cell):
            x_in = x.detach().requires_grad_(needs_x)
            h_in = h_prev.detach().requires_grad_()
            with phase("backward/recompute"):
                out = cell(x_in, h_in)
            outputs, grads = [], []
            if grad_h is not None:
                with phase("backward/neumann_series"):
                    g, diverged, terms = BACKWARD_SOLVERS[options.solver](
                        out, h_in, grad_h, options.neumann_steps, options.rtol, options.coupled
                    )
                options.stats[0] += diverged.sum()
                options.stats[1] += terms.sum()
                options.stats[2] += terms.numel()
                outputs.append(out)
                grads.append(g)
            if grad_lcp is not None and options.lcp_tau is not None:
                tau, reduction, coupled = options.lcp_tau, options.lcp_reduction, options.coupled
                with phase("backward/lcp"):
                    if power:
                        outputs.append(power_lcp(out, h_in, power[0], tau, reduction, coupled))
                    else:
                        outputs.append(lcp_penalty(out, h_in, tau, reduction))
                grads.append(grad_lcp)
            inputs = ([x_in] if needs_x else []) + list(ctx.params)
            if not outputs or not inputs:
                return (None, None, None, None) + (None,) * len(ctx.params)
            with phase("backward/parameter_gradients"):
                result = list(torch.autograd.grad(outputs, inputs, grads, allow_unused=True))
        grad_x = result.pop(0) if needs_x else None
        return (None, None, grad_x, None, *result)

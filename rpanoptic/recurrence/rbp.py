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

Memory. :class:`ImplicitStep` keeps x and h_{N-1} for backward and recomputes the last step
there, so what a recurrence keeps alive between forward and backward is a few state-sized
tensors whatever N is, less than the graph of a single BPTT step: two in RBP; in C-RBP also
dP/du, the penalty's gradient with respect to its vector-Jacobian product u (with the default
``lcp_gradient="jvp"``), and the power vector (with ``lcp_vector="power"``).

The penalty's gradient (C-RBP, ``lcp_gradient="jvp"``). Backward recomputes the step once, in
forward mode with the tangent w = dP/du: the primal is the graph that the Neumann series and the
parameter gradients run through, the tangent is J w, and <v, J w> back-propagated with the rest
gives the penalty's gradient (``lcp.py``). No second-order graph, no convolution whose kernel is
a feature map. With ``"double_backward"`` (or a cell that forward mode cannot run) the penalty's
product is rebuilt with ``create_graph=True`` and differentiated again.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from ._batch import expand_as, frozen_running_stats, group_norm
from .krylov import gmres_solve
from .lcp import (
    lcp_penalty,
    penalty_and_direction,
    power_vector,
    tangent_surrogate,
    try_step_with_tangent,
)
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
        lcp_gradient: how backward differentiates the penalty: "jvp" or "double_backward"
            (see ``lcp.py``).
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
    lcp_gradient: str = "jvp"
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
        ctx.power = ctx.jvp = False
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
                saved = [x, h_prev]
                v = None
                if options.lcp_vector == "power":
                    # The vector is kept for backward, which differentiates the same penalty.
                    v = power_vector(out, h_in, options.lcp_power_iters, coupled)
                    saved.append(v)
                    ctx.power = True
                (u,) = torch.autograd.grad(out, h_in, torch.ones_like(out) if v is None else v)
                lcp, w = penalty_and_direction(u, tau, reduction, options.lcp_vector, coupled)
                if options.lcp_gradient == "jvp" and not coupled:
                    # dP/du, kept so that backward gets the penalty's gradient from the same
                    # (forward-mode) recomputation of the step as the Neumann series.
                    saved.append(w)
                    ctx.jvp = True
                ctx.save_for_backward(*saved)
            return out.detach(), lcp

    @staticmethod
    def _recompute(ctx, x_in, h_in, w, v):
        """The step again, with its graph; with ``w``, through forward mode with tangent w, so
        that J w (for the penalty's surrogate <v, J w>, see ``lcp.py``) comes with it. Returns
        (h_next, J w or None)."""
        cell = ctx.cell
        if w is not None:
            stepped = try_step_with_tangent(lambda state: cell(x_in, state), h_in, w)
            if stepped is not None:
                return stepped
        return cell(x_in, h_in), None

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h, grad_lcp):
        x, h_prev, *extra = ctx.saved_tensors
        v = extra[0] if ctx.power else None
        w = extra[-1] if ctx.jvp and grad_lcp is not None else None
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
                out, tangent = ImplicitStep._recompute(ctx, x_in, h_in, w, v)
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
                with phase("backward/lcp"):
                    if tangent is not None:
                        surrogate = tangent_surrogate(tangent, v)
                    else:  # the double backward (or forward mode unavailable)
                        tau, reduction = options.lcp_tau, options.lcp_reduction
                        surrogate = lcp_penalty(
                            out,
                            h_in,
                            tau,
                            reduction,
                            options.lcp_vector,
                            coupled=options.coupled,
                            v=v,
                        )
                if surrogate.requires_grad:  # else the penalty depends on nothing trainable
                    outputs.append(surrogate)
                    grads.append(grad_lcp)
            inputs = ([x_in] if needs_x else []) + list(ctx.params)
            if not outputs or not inputs:
                return (None, None, None, None) + (None,) * len(ctx.params)
            with phase("backward/parameter_gradients"):
                result = list(torch.autograd.grad(outputs, inputs, grads, allow_unused=True))
        grad_x = result.pop(0) if needs_x else None
        return (None, None, grad_x, None, *result)

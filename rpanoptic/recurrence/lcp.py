"""The Lipschitz Coefficient Penalty (LCP) of C-RBP.

For one step h' = F(x, h) with Jacobian J = dF/dh (at the state h), the penalty is

    LCP = sum_i relu((1^T J)_i - tau)^2            (reduction "sum", the default)
    LCP = mean_i relu((1^T J)_i - tau)^2           (reduction "mean")

where 1^T J is the vector-Jacobian product of a ones-vector with J (one backward pass, no dense
Jacobian), i runs over every element of the state (batch, channel, position), and tau < 1 is
the target bound. (1^T J)_i is the i-th column sum of J: keeping every column sum below tau
bounds the 1-norm of J (for non-negative Jacobians, exactly), so F stays a contraction and
recurrent back-propagation's Neumann series converges.

Reduction. The default is the authors' panoptic-segmentation code: a sum over every element of
the (per-process) state, weighted by XI = 1e-3 in 33 of their 44 configs that set it; with a
weight of 1e-3 (rpanoptic's default, set in its Detectron2 config) the weighted penalty equals
theirs exactly.
Its strength per element is the weight, whatever the size of the state, so it constrains a large
FPN level as firmly as a 14 x 14 RoI. The "mean" (the authors' Pathfinder code, weight 10)
divides by the number of elements: the same weight is then a far weaker constraint on a large
state (on a 4 x 64 x 40 x 40 FPN level, weight 1 with "mean" is 1/410 of weight 1e-3 with
"sum"; measured here, such a penalty never constrained anything).

The product is built with ``create_graph=True`` so that the penalty is itself differentiable
with respect to the cell's parameters and its input x. In "crbp" the state h is a constant (the
penalty shapes F around the current state, as in the authors' implementation); in "cbptt" h is
the unrolled graph's h_{N-1}, so the penalty's gradient also flows through it.
"""

from typing import Callable, Dict

import torch

__all__ = ["LCP_REDUCTIONS", "ones_vjp", "lcp_from_vjp", "lcp_penalty"]

LCP_REDUCTIONS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sum": torch.sum,
    "mean": torch.mean,
}


def ones_vjp(h_next: torch.Tensor, h: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """1^T J for J = d h_next / d h. Both (B, C, H, W); returns a tensor shaped like h."""
    (u,) = torch.autograd.grad(
        h_next, h, torch.ones_like(h_next), create_graph=create_graph, retain_graph=True
    )
    return u


def lcp_from_vjp(u: torch.Tensor, tau: float, reduction: str = "sum") -> torch.Tensor:
    """relu(u - tau)^2 reduced by ``reduction`` ("sum" or "mean") over every element of the
    column sums u = 1^T J. Returns a scalar."""
    if reduction not in LCP_REDUCTIONS:
        raise ValueError(
            f"lcp reduction {reduction!r} is not supported; allowed: "
            f"{', '.join(map(repr, LCP_REDUCTIONS))}."
        )
    return LCP_REDUCTIONS[reduction](torch.relu(u - tau).pow(2))


def lcp_penalty(
    h_next: torch.Tensor, h: torch.Tensor, tau: float, reduction: str = "sum"
) -> torch.Tensor:
    """The LCP of the step h -> h_next (h must require grad). Returns a differentiable scalar."""
    return lcp_from_vjp(ones_vjp(h_next, h, create_graph=True), tau, reduction)

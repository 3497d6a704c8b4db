"""The Lipschitz Coefficient Penalty (LCP) of C-RBP.

For one step h' = F(x, h) with Jacobian J = dF/dh (at the state h), the penalty is

    LCP = mean_i relu((1^T J)_i - tau)^2

where 1^T J is the vector-Jacobian product of a ones-vector with J (one backward pass, no dense
Jacobian), i runs over every element of the state (batch, channel, position), and tau < 1 is
the target bound. (1^T J)_i is the i-th column sum of J: keeping every column sum below tau
bounds the 1-norm of J (for non-negative Jacobians, exactly), so F stays a contraction and
recurrent back-propagation's Neumann series converges.

Reduction: the mean, not the sum. A sum grows with the number of state elements (batch size,
image size, FPN level), so one weight would mean different strengths for a 14 x 14 RoI head and
a 200 x 300 FPN level; the mean makes ``lcp_weight`` a per-element strength that transfers
across layers, resolutions and batch sizes.

The product is built with ``create_graph=True`` so that the penalty is itself differentiable
with respect to the cell's parameters and its input x. The state h is treated as a constant
(the penalty shapes F around the current state, as in the paper's implementation).
"""

import torch

__all__ = ["ones_vjp", "lcp_from_vjp", "lcp_penalty"]


def ones_vjp(h_next: torch.Tensor, h: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """1^T J for J = d h_next / d h. Both (B, C, H, W); returns a tensor shaped like h."""
    (u,) = torch.autograd.grad(
        h_next, h, torch.ones_like(h_next), create_graph=create_graph, retain_graph=True
    )
    return u


def lcp_from_vjp(u: torch.Tensor, tau: float) -> torch.Tensor:
    """mean(relu(u - tau)^2): the penalty for the column sums u = 1^T J. Returns a scalar."""
    return torch.relu(u - tau).pow(2).mean()


def lcp_penalty(h_next: torch.Tensor, h: torch.Tensor, tau: float) -> torch.Tensor:
    """The LCP of the step h -> h_next (h must require grad). Returns a differentiable scalar."""
    return lcp_from_vjp(ones_vjp(h_next, h, create_graph=True), tau)

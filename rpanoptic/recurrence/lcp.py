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

The ones-vector is blind to cancellation. A column sum (1^T J)_i is signed: a Jacobian with
large entries of both signs has small column sums and yet a spectral radius far above 1 (the
column sums of J = [[2, -3], [-1.5, 2.5]] are 0.5 and -0.5; its spectral radius is 4.4). Trained
Pathfinder hGRUs showed exactly this: the penalty held (0.7% of column sums above tau) while the
state never converged (spectral radius about 6.8). The opt-in **power vector**
(``lcp_vector="power"``) targets the radius itself:

    LCP = reduce_b relu(||v_b J_b|| - tau)^2          (b: the samples, or one group if coupled)

where v_b is a unit vector from ``power_iters`` steps of power iteration v <- v J / ||v J||
from a fixed random start, held constant in the penalty's gradient. As the iteration converges,
v is the dominant left eigenvector of J and ||v J|| its spectral radius, so the penalty is
relu(rho(J) - tau)^2 per sample: it constrains contraction, which the Neumann series needs,
whatever the signs. It costs ``power_iters`` more vector-Jacobian products per training step.

The penalty's gradient (``gradient``). With u = v J, the penalty is a function P(u) and its
gradient with respect to anything J depends on (the cell's weights, x, and h in cbptt) is that
of <w, v J> with v and w = dP/du held constant, and <w, v J> = <v, J w>: a Jacobian-vector
product. "jvp" (the default) computes J w by forward-mode differentiation of one more step and
back-propagates <v, J w> through it: every convolution of that graph is the cell's own (its
weight gradient goes to the ordinary weight-gradient kernel). "double_backward" builds u = v J
with ``create_graph=True`` and back-propagates through that backward pass, as the authors' code
does; there PyTorch computes the weight term of a convolution's double backward as a
convolution whose kernel is a whole feature map, which on a GPU is slow and takes cuDNN
workspaces of the map's size. Both give the same gradient (tested in float64). A cell with an
operation that forward mode does not support falls back to "double_backward" with a warning;
so does a cell with a BatchNorm in training mode (a coupled batch), silently: PyTorch's
forward-mode batch-norm formula is not differentiable through the batch statistics, so <v, J w>
back-propagated through it misses their terms (measured: the gradient with respect to x off by
about 1%).
"""

import warnings
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.autograd.forward_ad as fwAD

from ._batch import expand_as, group_norm

__all__ = [
    "LCP_REDUCTIONS",
    "LCP_VECTORS",
    "LCP_GRADIENTS",
    "ones_vjp",
    "lcp_from_vjp",
    "lcp_penalty",
    "power_vector",
    "power_lcp",
    "penalty_and_direction",
    "step_with_tangent",
    "tangent_surrogate",
    "jvp_surrogate",
    "try_step_with_tangent",
    "forward_mode_unsupported",
]

LCP_REDUCTIONS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sum": torch.sum,
    "mean": torch.mean,
}

LCP_VECTORS = ("ones", "power")
"""The vector of the penalty's vector-Jacobian product: the authors' ones-vector, or the power
iteration's estimate of J's dominant left eigenvector (see the module docstring)."""


LCP_GRADIENTS = ("jvp", "double_backward")
"""How the penalty's gradient is computed (see the module docstring): a forward-mode product
("jvp") or the double backward of the vector-Jacobian product ("double_backward")."""


def ones_vjp(h_next: torch.Tensor, h: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """1^T J for J = d h_next / d h. Both (B, C, H, W); returns a tensor shaped like h."""
    (u,) = torch.autograd.grad(
        h_next, h, torch.ones_like(h_next), create_graph=create_graph, retain_graph=True
    )
    return u


def _excess(values: torch.Tensor, tau: float, reduction: str) -> torch.Tensor:
    """relu(values - tau)^2 reduced by ``reduction`` ("sum" or "mean"): a scalar."""
    if reduction not in LCP_REDUCTIONS:
        raise ValueError(
            f"lcp reduction {reduction!r} is not supported; allowed: "
            f"{', '.join(map(repr, LCP_REDUCTIONS))}."
        )
    return LCP_REDUCTIONS[reduction](torch.relu(values - tau).pow(2))


def lcp_from_vjp(u: torch.Tensor, tau: float, reduction: str = "sum") -> torch.Tensor:
    """relu(u - tau)^2 reduced by ``reduction`` ("sum" or "mean") over every element of the
    column sums u = 1^T J. Returns a scalar."""
    return _excess(u, tau, reduction)


def power_vector(
    h_next: torch.Tensor, h: torch.Tensor, iters: int, coupled: bool = False, seed: int = 0
) -> torch.Tensor:
    """A unit vector per sample (per batch when ``coupled``) after ``iters`` power-iteration
    steps v <- v J / ||v J|| for J = d h_next / d h, from a random start drawn from a generator
    seeded with ``seed`` (the global random state is not touched). Detached; keeps the graph of
    h_next for further products."""
    gen = torch.Generator(device=h.device).manual_seed(seed)
    v = torch.randn(h.shape, generator=gen, device=h.device, dtype=h.dtype)
    v = v / expand_as(group_norm(v, coupled).clamp_min(1e-30), v)
    for _ in range(iters):
        (w,) = torch.autograd.grad(h_next, h, v, retain_graph=True)
        v = w / expand_as(group_norm(w, coupled).clamp_min(1e-30), w)
    return v.detach()


def power_lcp(
    h_next: torch.Tensor,
    h: torch.Tensor,
    v: torch.Tensor,
    tau: float,
    reduction: str = "sum",
    coupled: bool = False,
    create_graph: bool = True,
) -> torch.Tensor:
    """relu(||v J|| - tau)^2 per sample (per batch when ``coupled``), reduced by ``reduction``
    over the samples; v: unit vectors from :func:`power_vector`, a constant here."""
    (u,) = torch.autograd.grad(h_next, h, v, create_graph=create_graph, retain_graph=True)
    return _excess(group_norm(u, coupled), tau, reduction)


def penalty_and_direction(
    u: torch.Tensor, tau: float, reduction: str, vector: str, coupled: bool = False
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The penalty P(u) of the product u = v J (``vector`` "ones": column sums; "power":
    per-sample products with the power vector) and its gradient w = dP/du, both detached.

    ones:  P = reduce_i relu(u_i - tau)^2,        w = 2 relu(u - tau) / (n if "mean")
    power: P = reduce_b relu(||u_b|| - tau)^2,    w_b = 2 relu(||u_b|| - tau) u_b / ||u_b|| / (B if
    "mean"), where n is the number of elements and B the number of groups.
    """
    u = u.detach()
    if vector == "power":
        norms = group_norm(u, coupled)
        value = _excess(norms, tau, reduction)
        scale = 2 * torch.relu(norms - tau) / norms.clamp_min(1e-30)
        if reduction == "mean":
            scale = scale / norms.numel()
        return value, u * expand_as(scale, u)
    value = _excess(u, tau, reduction)
    w = 2 * torch.relu(u - tau)
    return value, (w / u.numel() if reduction == "mean" else w)


def step_with_tangent(
    step: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor, w: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(step(h), J w) for J = d step(h) / dh, by one forward-mode pass through ``step``; both
    keep their graph (the primal's for backward through the step, the tangent's for the
    penalty's gradient). J w is zero when the step does not depend on h.

    Raises whatever forward mode raises for an operation without a forward-mode formula
    (NotImplementedError or RuntimeError)."""
    with fwAD.dual_level():
        out, tangent = fwAD.unpack_dual(step(fwAD.make_dual(h, w.to(h.dtype))))
    return out, (torch.zeros_like(out) if tangent is None else tangent)


def tangent_surrogate(tangent: torch.Tensor, v: Optional[torch.Tensor]) -> torch.Tensor:
    """<v, J w> from the tangent J w (v None: the ones-vector). Its gradient is the penalty's
    gradient when w = dP/du (see :func:`penalty_and_direction`)."""
    return tangent.sum() if v is None else (tangent * v).sum()


def jvp_surrogate(
    step: Callable[[torch.Tensor], torch.Tensor],
    h: torch.Tensor,
    v: Optional[torch.Tensor],
    w: torch.Tensor,
) -> torch.Tensor:
    """<v, J w> for J = d step(h) / dh, with J w from :func:`step_with_tangent`.
    Differentiable with respect to whatever ``step`` reads (its module's parameters, its input
    x, and h when h has a graph). Raises as :func:`step_with_tangent`."""
    return tangent_surrogate(step_with_tangent(step, h, w)[1], v)


_FALLBACK_WARNED = set()


def forward_mode_unsupported(error: Exception) -> bool:
    """Whether ``error`` says that an operation has no forward-mode formula (as opposed to an
    error of the computation itself, e.g. out of memory, which is re-raised)."""
    if isinstance(error, NotImplementedError):
        return True
    text = str(error).lower()
    return any(k in text for k in ("forward ad", "forward-mode", "forward mode", "jvp"))


def _warn_forward_mode_fallback(error: Exception) -> None:
    """Warn once per kind of error that the penalty's gradient falls back to the double
    backward."""
    key = type(error).__name__ + str(error)[:200]
    if key not in _FALLBACK_WARNED:
        _FALLBACK_WARNED.add(key)
        warnings.warn(
            "LCP gradient: forward-mode differentiation of the cell failed "
            f"({type(error).__name__}: {str(error)[:200]}); using the double backward "
            "(lcp_gradient='double_backward') instead. Give the cell's custom autograd functions "
            "a jvp, or set lcp_gradient='double_backward' to silence this warning.",
            RuntimeWarning,
            stacklevel=3,
        )


def try_step_with_tangent(
    step: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor, w: torch.Tensor
) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """:func:`step_with_tangent`, or None (warned once) when the step has an operation without
    a forward-mode formula, so that the caller falls back to the double backward. Other errors
    are raised."""
    try:
        return step_with_tangent(step, h, w)
    except (NotImplementedError, RuntimeError) as error:
        if not forward_mode_unsupported(error):
            raise
        _warn_forward_mode_fallback(error)
        return None


def lcp_penalty(
    h_next: torch.Tensor,
    h: torch.Tensor,
    tau: float,
    reduction: str = "sum",
    vector: str = "ones",
    power_iters: int = 5,
    coupled: bool = False,
    step: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    v: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The LCP of the step h -> h_next (h must require grad) with the ``vector`` "ones" (the
    authors') or "power" (``power_iters`` steps, or the given unit vectors ``v``; ``coupled``
    as the cell). Returns a scalar whose gradient is the penalty's.

    With ``step`` (h -> h_next as a function, e.g. ``lambda h: cell(x, h)``) the gradient comes
    from a forward-mode product through one more call of ``step`` ("jvp" in the module
    docstring; the returned value is the penalty, its gradient exact, its second derivative
    not provided); without it, or when ``coupled`` (a training-mode BatchNorm, see the module
    docstring), from the double backward of ``h_next``'s graph."""
    if vector not in LCP_VECTORS:
        raise ValueError(f"lcp vector {vector!r} is not supported; allowed: {LCP_VECTORS}.")
    if vector == "power" and v is None:
        v = power_vector(h_next, h, power_iters, coupled)
    if step is not None and not coupled:
        (u,) = torch.autograd.grad(
            h_next, h, torch.ones_like(h_next) if v is None else v, retain_graph=True
        )
        value, w = penalty_and_direction(u, tau, reduction, vector, coupled)
        stepped = try_step_with_tangent(step, h, w)
        if stepped is not None:
            surrogate = tangent_surrogate(stepped[1], v)
            return value + (surrogate - surrogate.detach())
    if vector == "power":
        return power_lcp(h_next, h, v, tau, reduction, coupled)
    return lcp_from_vjp(ones_vjp(h_next, h, create_graph=True), tau, reduction)

"""Run a recurrence h_{t+1} = F(x, h_t) for N steps and pick how it learns.

Learning modes (``grad``):

- "bptt": N steps, every step in the autograd graph (memory O(N)).
- "cbptt": as "bptt", plus the LCP of the last step (``lcp``).
- "rbp": N - 1 steps without a graph, the last step through :class:`~.rbp.ImplicitStep`, whose
  backward is a truncated Neumann series of K vector-Jacobian products (memory O(1) in N).
- "crbp": as "rbp", plus the LCP of the last step. This is C-RBP.

All four compute the same forward values for the same weights and N. At inference (module in
eval mode, or autograd disabled) no graph is built; the recurrence runs ``test_timesteps`` steps
(0: ``timesteps``), and with ``halt_tol > 0`` each sample stops updating once its relative
change ||h_{t+1} - h_t|| / ||h_t|| falls below ``halt_tol``; ``test_solver="anderson"``
accelerates those steps (``iterate.py``).

Precision: the recurrence runs with autocast disabled, and half-precision inputs are promoted
to float32, so a fixed-point iteration and its Neumann series are never run in float16 or
bfloat16 (their errors compound over steps). The output is then float32; the surrounding
autocast region casts it where it is used.
"""

from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from ._batch import batch_coupled, frozen_running_stats
from .arguments import Rule, at_least, check_arguments, flag, is_number, one_of
from .compiled import CompiledStep
from .controls import RecurrenceControls
from .iterate import anderson_iterate, picard_iterate
from .lcp import LCP_GRADIENTS, LCP_REDUCTIONS, LCP_VECTORS, lcp_penalty
from .phases import phase
from .rbp import BACKWARD_SOLVERS, ImplicitStep, ImplicitStepOptions

__all__ = ["Recurrence", "GRAD_MODES", "TEST_SOLVERS", "ARGUMENTS"]

Step = Tuple[torch.Tensor, Optional[torch.Tensor]]


def _unroll_with_graph(rec: "Recurrence", x: torch.Tensor, h: torch.Tensor) -> Step:
    """bptt / cbptt: N steps in the graph; the LCP (cbptt) at the last step."""
    with phase("unrolled_steps"):
        for _ in range(rec.timesteps - 1):
            h = rec.cell(x, h)
        if not rec.constrained:
            return rec.cell(x, h), None
        if not h.requires_grad:  # N = 1 from a constant start: the penalty still needs dF/dh
            h = h.detach().requires_grad_()
        h_next = rec.cell(x, h)
        # The forward-mode step runs only without a training-mode BatchNorm (``lcp_penalty``
        # uses the double backward for a coupled batch), so no running statistics move twice.
        step = (lambda state: rec.cell(x, state)) if rec.lcp_gradient == "jvp" else None
        penalty = lcp_penalty(
            h_next,
            h,
            rec.lcp_tau,
            rec.lcp_reduction,
            rec.lcp_vector,
            rec.lcp_power_iters,
            batch_coupled(rec.cell),
            step=step,
        )
        return h_next, penalty


def _unroll_implicit(rec: "Recurrence", x: torch.Tensor, h: torch.Tensor) -> Step:
    """rbp / crbp: N - 1 steps without a graph, the last one differentiated by RBP."""
    with torch.no_grad(), phase("graph_free_steps"):
        for _ in range(rec.timesteps - 1):
            h = rec.step_without_graph(x, h)
    options = ImplicitStepOptions(
        neumann_steps=rec.neumann_steps,
        rtol=rec.neumann_rtol,
        lcp_tau=rec.lcp_tau if rec.constrained else None,
        coupled=batch_coupled(rec.cell),
        stats=rec.neumann_stats(x.device),
        lcp_reduction=rec.lcp_reduction,
        lcp_vector=rec.lcp_vector,
        lcp_power_iters=rec.lcp_power_iters,
        lcp_gradient=rec.lcp_gradient,
        solver=rec.backward_solver,
    )
    params = [p for p in rec.cell.parameters() if p.requires_grad]
    with phase("implicit_step"):
        h_next, lcp = ImplicitStep.apply(rec.cell, options, x, h, *params)
    return h_next, lcp if rec.constrained else None


_TRAINING: Dict[str, Callable[["Recurrence", torch.Tensor, torch.Tensor], Step]] = {
    "bptt": _unroll_with_graph,
    "cbptt": _unroll_with_graph,
    "rbp": _unroll_implicit,
    "crbp": _unroll_implicit,
}
GRAD_MODES = tuple(_TRAINING)
TEST_SOLVERS = ("picard", "anderson")


ARGUMENTS: Dict[str, Rule] = {
    "timesteps": at_least(1),
    "grad": one_of(GRAD_MODES),
    # backward solver
    "neumann_steps": at_least(0),
    "neumann_rtol": Rule(lambda v: is_number(v) and 0 <= v < 1, "0 <= value < 1"),
    "backward_solver": one_of(BACKWARD_SOLVERS),
    # penalty
    "lcp_tau": Rule(
        lambda v: is_number(v) and 0 < v < 1,
        "0 < value < 1 (a contraction; the paper uses 0.9-0.999)",
    ),
    "lcp_reduction": one_of(LCP_REDUCTIONS),
    "lcp_vector": one_of(LCP_VECTORS),
    "lcp_power_iters": at_least(1),
    "lcp_gradient": one_of(LCP_GRADIENTS),
    # inference
    "test_timesteps": at_least(0, "0: as many as in training"),
    "halt_tol": Rule(lambda v: is_number(v) and v >= 0, "a number >= 0 (0 disables halting)"),
    "test_solver": one_of(TEST_SOLVERS),
    "anderson_memory": at_least(1),
    # runtime
    "compile_steps": flag(),
    "check_finite": flag(),
}
"""The rules of :class:`Recurrence`'s arguments, in its signature's order (also applied to the
config keys behind them). ``cell`` and ``name`` have none: any module, any string."""


class Recurrence(RecurrenceControls, nn.Module):
    """Iterate a cell to (near) its fixed point and train it with BPTT, RBP, C-BPTT or C-RBP.

    Args:
        cell: any module with ``forward(x, h) -> h_next`` (same shape), e.g. ``HGRUCell``.
        timesteps: N, steps run during training (>= 1).
        grad: "bptt", "cbptt", "rbp" or "crbp" (see the module docstring).

    The other arguments are keyword-only, in four groups.

    Backward solver (rbp, crbp):
        neumann_steps: K, terms of the Neumann series after the first (>= 0).
        neumann_rtol: relative tolerance that stops the Neumann series early (0 disables).
        backward_solver: how the K vector-Jacobian products combine: "neumann" (the truncated
            series, the paper's) or "gmres" (the combination with the smallest residual: the
            same K products, a smaller gradient error; see ``krylov.py``).

    Penalty (cbptt, crbp):
        lcp_tau: tau of the Lipschitz coefficient penalty (0 < tau < 1).
        lcp_reduction: "sum" (the authors' panoptic code) or "mean" of the penalty over the
            state's elements (see ``lcp.py``).
        lcp_vector: the penalty's vector: "ones" (the authors', column sums of J) or "power"
            (J's dominant left eigenvector by power iteration, so that the penalty bounds the
            spectral radius; see ``lcp.py``).
        lcp_power_iters: power-iteration steps per training step with ``lcp_vector="power"``.
        lcp_gradient: how the penalty's gradient is computed: "jvp" (a forward-mode product
            through one more step, no convolution with a feature map as its kernel) or
            "double_backward" (as the authors' code); the same gradient (see ``lcp.py``).

    Inference:
        test_timesteps: steps run at inference; 0 means ``timesteps``.
        halt_tol: relative-change tolerance of per-sample halting; 0 disables.
        test_solver: how inference iterates to the fixed point: "picard" (h_{t+1} = F(x, h_t),
            what training runs) or "anderson" (each step feeds F the combination of its last
            ``anderson_memory`` evaluations with the smallest residual: the same cost per
            step, fewer steps to a halting tolerance; see ``iterate.py``).
        anderson_memory: differences Anderson mixing keeps (>= 1).

    Runtime:
        compile_steps: run the steps that build no graph (the N - 1 steps before the implicit
            one in rbp/crbp, and inference) through ``torch.compile`` (see ``compiled.py``):
            same values, faster after a first call that compiles; eager with a warning when
            compilation fails.
        check_finite: after each forward, check the final state and raise FloatingPointError
            naming the layer (``name``) and the first non-finite step (one fused check and host
            sync per forward, or one for several layers inside
            :func:`~.controls.deferred_finite_checks`; on by default).
        name: how errors and logs name the layer (rpanoptic's models pass its module path).

    After a training forward in "cbptt"/"crbp", ``lcp`` holds the penalty (a scalar tensor in the
    graph); otherwise it is None. After any forward, ``steps`` holds the steps taken per sample,
    a (B,) long tensor. Other code steers and observes the recurrence only through
    :meth:`using`, :meth:`recording`, :func:`~.controls.sweep` and :meth:`diagnostics` (see
    ``controls.py``); it never assigns the recurrence's attributes.
    """

    def __init__(
        self,
        cell: nn.Module,
        timesteps: int,
        grad: str = "crbp",
        *,
        # backward solver
        neumann_steps: int = 15,
        neumann_rtol: float = 0.0,
        backward_solver: str = "neumann",
        # penalty
        lcp_tau: float = 0.9,
        lcp_reduction: str = "sum",
        lcp_vector: str = "ones",
        lcp_power_iters: int = 5,
        lcp_gradient: str = "jvp",
        # inference
        test_timesteps: int = 0,
        halt_tol: float = 0.0,
        test_solver: str = "picard",
        anderson_memory: int = 5,
        # runtime
        compile_steps: bool = False,
        check_finite: bool = True,
        name: str = "recurrence",
    ):
        super().__init__()
        check_arguments(
            "Recurrence",
            ARGUMENTS,
            timesteps=timesteps,
            grad=grad,
            neumann_steps=neumann_steps,
            neumann_rtol=neumann_rtol,
            backward_solver=backward_solver,
            lcp_tau=lcp_tau,
            lcp_reduction=lcp_reduction,
            lcp_vector=lcp_vector,
            lcp_power_iters=lcp_power_iters,
            lcp_gradient=lcp_gradient,
            test_timesteps=test_timesteps,
            halt_tol=halt_tol,
            test_solver=test_solver,
            anderson_memory=anderson_memory,
            compile_steps=compile_steps,
            check_finite=check_finite,
        )
        self.cell = cell
        self.timesteps, self.grad = timesteps, grad
        self.neumann_steps, self.neumann_rtol = neumann_steps, float(neumann_rtol)
        self.backward_solver = backward_solver
        self.lcp_tau, self.lcp_reduction = float(lcp_tau), lcp_reduction
        self.lcp_vector, self.lcp_power_iters = lcp_vector, int(lcp_power_iters)
        self.lcp_gradient = lcp_gradient
        self.test_timesteps, self.halt_tol = test_timesteps, halt_tol
        self.test_solver, self.anderson_memory = test_solver, anderson_memory
        self.compile_steps, self.check_finite = compile_steps, check_finite
        self.name = str(name)
        self._compiled_step = CompiledStep(cell, self.name) if compile_steps else None
        self.lcp: Optional[torch.Tensor] = None
        self.steps: Optional[torch.Tensor] = None

    def _check_setting(self, key: str, value) -> None:
        """Validate a setting that :meth:`using` may change."""
        check_arguments("Recurrence", ARGUMENTS, **{key: value})

    def step_without_graph(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step of the cell where no graph is built (compiled when ``compile_steps``)."""
        if self._compiled_step is None:
            return self.cell(x, h)
        return self._compiled_step(x, h)

    @property
    def constrained(self) -> bool:
        """Whether the mode adds the LCP (cbptt, crbp)."""
        return self.grad in ("cbptt", "crbp")

    def forward(self, x: torch.Tensor, h0: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Run the recurrence. x: (B, C, H, W) drive; h0: start state (default zeros).

        Returns the final state, (B, C, H, W).
        """
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        low = [
            p.dtype for p in self.cell.parameters() if p.dtype in (torch.float16, torch.bfloat16)
        ]
        if low:
            raise TypeError(
                f"Recurrence {self.name!r}: its cell's parameters are {low[0]}, but the fixed "
                "point and its gradient are computed in float32. Keep the cell in float32 "
                "(call .float() on it after .half()) and use autocast for mixed precision: the "
                "recurrence runs outside autocast in float32 and casts half inputs itself."
            )
        if x.shape[0] == 0:  # e.g. no RoI in an image: keep the graph connected, do nothing
            return self._empty(x)
        start = torch.zeros_like(x) if h0 is None else h0.to(x.dtype)
        with torch.autocast(x.device.type, enabled=False):
            if self.training and torch.is_grad_enabled():
                h, self.lcp = _TRAINING[self.grad](self, x, start)
                self.steps = torch.full((x.shape[0],), self.timesteps, device=x.device)
            else:
                self.lcp = None
                h, self.steps = self._infer(x, start, cacheable=h0 is None)
        if self.check_finite:
            self._check_state_finite(x, start, h)
        self._remember(x, h)
        return h

    def _empty(self, x: torch.Tensor) -> torch.Tensor:
        # Zero-valued, but connected to x and every parameter, so that a data-parallel wrapper
        # sees every parameter take part in the step even when a rank has nothing to process.
        zero = sum(p.sum() for p in self.cell.parameters()) * 0.0
        training = self.training and torch.is_grad_enabled()
        self.lcp = zero if training and self.constrained else None
        self.steps = torch.zeros(0, dtype=torch.long, device=x.device)
        return x * 0.0 + zero

    def _infer(self, x, h, cacheable: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        limit = self.test_timesteps or self.timesteps
        if self._sweep is None:
            h, steps, _ = self._iterate(x, h, limit)
            return h, steps
        # Sweep mode: one run to the largest count per input, answered from the cache.
        cache = self._sweep
        same = cache["x"] is not None and cache["x"].shape == x.shape and torch.equal(cache["x"], x)
        if not (cacheable and same):
            _, _, cache["states"] = self._iterate(x, h, max(cache["counts"]), cache["counts"])
            cache["x"] = x if cacheable else None
        return cache["states"][cache["count"]]

    @torch.no_grad()
    def _iterate(self, x, h, limit: int, record=()):
        """Run ``limit`` steps without a graph (``test_solver``), halting per sample when
        ``halt_tol > 0``; returns the final state, the steps per sample (B,) and
        {t: (h_t, steps_t)} for t in ``record`` (see ``iterate.py``)."""
        coupled = batch_coupled(self.cell)
        with phase("graph_free_steps"):
            step, tol = self.step_without_graph, self.halt_tol
            if self.test_solver == "anderson":
                memory = self.anderson_memory
                return anderson_iterate(step, x, h, limit, tol, memory, coupled, record)
            return picard_iterate(step, x, h, limit, tol, coupled, record)

    @torch.no_grad()
    def _raise_nonfinite(self, x: torch.Tensor, h: torch.Tensor) -> None:
        if not torch.isfinite(x).all():
            where = "its input x is already non-finite (step 0)"
        else:
            limit = self.timesteps if self.training else (self.test_timesteps or self.timesteps)
            step = limit
            with frozen_running_stats(self.cell):
                for t in range(1, limit + 1):
                    h = self.cell(x, h)
                    if not torch.isfinite(h).all():
                        step = t
                        break
            where = f"its state became non-finite at step {step} of {limit}"
        raise FloatingPointError(
            f"Recurrence {self.name!r} (grad={self.grad!r}) diverged: {where}. Lower the learning "
            "rate, raise the LCP weight or lower lcp_tau to keep it contractive, or "
            "check the input data for NaN/inf."
            + (
                " At inference it ran with Anderson acceleration: compare with "
                "test_solver='picard' (MODEL.RECURRENT.TEST_SOLVER picard)."
                if self.test_solver == "anderson" and not self.training
                else ""
            )
        )

    def extra_repr(self) -> str:
        """The arguments in the signature's order; non-default choices of a solver, the penalty's
        vector or compilation only when set."""
        parts = [f"timesteps={self.timesteps}, grad={self.grad!r}"]
        parts.append(f"neumann_steps={self.neumann_steps}")
        if self.backward_solver == "gmres":
            parts.append("backward_solver='gmres'")
        parts.append(f"lcp_tau={self.lcp_tau}, lcp_reduction={self.lcp_reduction!r}")
        if self.lcp_vector == "power":
            parts.append(f"lcp_vector='power', lcp_power_iters={self.lcp_power_iters}")
        if self.lcp_gradient != "jvp":
            parts.append(f"lcp_gradient={self.lcp_gradient!r}")
        parts.append(f"test_timesteps={self.test_timesteps}, halt_tol={self.halt_tol}")
        if self.test_solver == "anderson":
            parts.append(f"test_solver='anderson', anderson_memory={self.anderson_memory}")
        if self.compile_steps:
            parts.append("compile_steps=True")
        return ", ".join(parts)

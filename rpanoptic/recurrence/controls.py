"""How code outside a :class:`~.runner.Recurrence` steers and observes it: documented context
managers instead of attributes set from outside.

- ``with rec.using(grad=..., test_timesteps=..., lcp_collected=...):`` changes how it runs for
  the block (learning mode, inference steps, whether the caller adds the penalty to its loss).
- ``with rec.recording() as record:`` keeps each forward's input and final state in
  ``record`` (a :class:`StateRecord`), which :meth:`diagnostics` analyses.
- ``with sweep(model, counts) as set_count:`` evaluates several inference step counts in one
  pass (the one sweep mechanism): each recurrence of ``model`` iterates once to ``max(counts)``
  per input, keeps its state at every count and answers ``set_count(t)`` forwards of the same
  input from that cache. Any module with ``sweep_begin()`` and ``sweep_end()`` methods has them
  called on entry and exit (the RFPN backbone computes its feed-forward features once per
  image that way).
- ``with deferred_finite_checks(model):`` queues each recurrence's check that its final state
  is finite (``check_finite``) instead of synchronising with the host once per layer, and checks
  them all with one synchronisation when the block ends (the RFPN runs its levels this way).
- :meth:`diagnostics` and the Neumann counters report on the convergence.
"""

import contextlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Sequence

import torch
from torch import nn

from .diagnostics import fixed_point_residual, spectral_radius

__all__ = ["RecurrenceControls", "StateRecord", "sweep", "deferred_finite_checks"]


@dataclass
class StateRecord:
    """The input ``x`` and final state ``h`` of the latest forward inside a
    :meth:`RecurrenceControls.recording` block (detached; None before the first)."""

    input: Optional[torch.Tensor] = None
    state: Optional[torch.Tensor] = None


class RecurrenceControls:
    """Context managers, sweep hooks and diagnostics of :class:`~.runner.Recurrence` (a mixin:
    it uses the recurrence's ``cell``, ``grad``, ``test_timesteps``, ``steps`` and
    ``_check_setting``)."""

    _lcp_collected: bool = False
    _record: Optional[StateRecord] = None
    _sweep: Optional[dict] = None
    _neumann_stats: Optional[torch.Tensor] = None
    _finite_queue: Optional[list] = None

    def _check_state_finite(self, x: torch.Tensor, start: torch.Tensor, h: torch.Tensor) -> None:
        """``check_finite``: raise now (one host synchronisation), or queue the check inside
        :func:`deferred_finite_checks`."""
        if self._finite_queue is not None:
            self._finite_queue.append((self, torch.isfinite(h).all(), x, start))
        elif not torch.isfinite(h).all():
            self._raise_nonfinite(x, start)

    @property
    def lcp_collected(self) -> bool:
        """Whether the caller adds ``lcp`` to its loss (set with :meth:`using`)."""
        return self._lcp_collected

    @contextlib.contextmanager
    def using(
        self,
        *,
        grad: Optional[str] = None,
        test_timesteps: Optional[int] = None,
        lcp_collected: Optional[bool] = None,
        halt_tol: Optional[float] = None,
        test_solver: Optional[str] = None,
        anderson_memory: Optional[int] = None,
    ) -> Iterator["RecurrenceControls"]:
        """Run with other settings inside the block; the previous ones come back on exit.

        Args:
            grad: learning mode ("bptt", "cbptt", "rbp", "crbp").
            test_timesteps: steps at inference (0: ``timesteps``). This and the constructor
                argument are the ways to set them (a sweep evaluates several at once).
            lcp_collected: True when the caller adds ``lcp`` to its loss (as
                ``rpanoptic.engine.LCPHook`` does); a constrained mode trained without it only
                gets a warning, since the penalty would be computed and dropped.
            halt_tol, test_solver, anderson_memory: how inference iterates (per-sample halting
                tolerance, "picard" or "anderson", Anderson's memory), e.g. to evaluate one
                trained model under several inference settings.
        """
        changes = {
            "grad": grad,
            "test_timesteps": test_timesteps,
            "halt_tol": halt_tol,
            "test_solver": test_solver,
            "anderson_memory": anderson_memory,
        }
        changes = {k: v for k, v in changes.items() if v is not None}
        for key, value in changes.items():
            self._check_setting(key, value)
        if lcp_collected is not None:
            changes["_lcp_collected"] = lcp_collected
        saved = {key: getattr(self, key) for key in changes}
        try:
            for key, value in changes.items():
                setattr(self, key, value)
            yield self
        finally:
            for key, value in saved.items():
                setattr(self, key, value)

    @contextlib.contextmanager
    def recording(self) -> Iterator[StateRecord]:
        """Keep the input and final state of each forward inside the block (detached) in the
        yielded :class:`StateRecord`; dropped on exit."""
        record, previous = StateRecord(), self._record
        self._record = record
        try:
            yield record
        finally:
            self._record = previous

    def _remember(self, x: torch.Tensor, h: torch.Tensor) -> None:
        if self._record is not None:
            self._record.input, self._record.state = x.detach(), h.detach()

    # Sweep mode, entered and left by sweep.sweep(): an inference forward runs once to the
    # largest count per input and answers each selected count from the states it kept.
    def _begin_sweep(self, counts) -> None:
        self._sweep = {"counts": list(counts), "count": counts[-1], "x": None, "states": None}

    def _select_count(self, count: int) -> None:
        self._sweep["count"] = count

    def _end_sweep(self) -> None:
        self._sweep = None

    def neumann_stats(self, device: torch.device) -> torch.Tensor:
        """The running [fallbacks, terms, series] counters of RBP backward passes, on device."""
        if self._neumann_stats is None or self._neumann_stats.device != torch.device(device):
            self._neumann_stats = torch.zeros(3, device=device)
        return self._neumann_stats

    def reset_neumann_stats(self) -> None:
        """Zero the counters read by :meth:`diagnostics`."""
        if self._neumann_stats is not None:
            self._neumann_stats.zero_()

    def diagnostics(
        self,
        x: Optional[torch.Tensor] = None,
        h: Optional[torch.Tensor] = None,
        power_iters: int = 20,
    ) -> Dict[str, torch.Tensor]:
        """Convergence diagnostics, as tensors (no host synchronisation).

        Args:
            x, h: input and state to analyse; default: those of the latest forward inside the
                current :meth:`recording` block.
            power_iters: vector-Jacobian products of the spectral-radius estimate.

        Returns:
            ``residual`` and ``spectral_radius`` per sample (see ``diagnostics.py``), and the
            counters since the last reset: ``neumann_fallbacks`` (series stopped by the
            safeguard), ``neumann_terms`` (mean terms added per series), ``steps`` (mean steps).
        """
        if (x is None or h is None) and self._record is not None:
            x = self._record.input if x is None else x
            h = self._record.state if h is None else h
        if x is None or h is None:
            raise ValueError(
                "Recurrence.diagnostics: no state to analyse; pass x and h, or run the forward "
                "inside `with rec.recording():` first."
            )
        out = {
            "residual": fixed_point_residual(self.cell, x, h),
            "spectral_radius": spectral_radius(self.cell, x, h, iters=power_iters),
        }
        stats = self.neumann_stats(x.device)
        out["neumann_fallbacks"] = stats[0].clone()
        out["neumann_terms"] = stats[1] / stats[2].clamp_min(1)
        if self.steps is not None:
            out["steps"] = self.steps.float().mean()
        return out


@contextlib.contextmanager
def sweep(model: nn.Module, counts: Sequence[int]) -> Iterator[Callable[[int], None]]:
    """Sweep mode for every recurrence of ``model`` (DDP-wrapped or not, or a bare
    :class:`Recurrence`); yields ``set_count(t)``, which selects the count the next forwards
    answer (one of ``counts``; the largest is selected on entry)."""
    counts = sorted({int(c) for c in counts}) if counts else []
    if not counts or counts[0] < 1:
        raise ValueError(f"sweep: counts must be integers >= 1, got {list(counts)}.")
    model = getattr(model, "module", model)
    layers = [m for m in model.modules() if isinstance(m, RecurrenceControls)]
    if not layers:
        raise ValueError("timestep sweep: the model has no recurrent layer to sweep.")
    joined = [m for m in model.modules() if hasattr(m, "sweep_begin") and hasattr(m, "sweep_end")]
    for layer in layers:
        layer._begin_sweep(counts)
    for module in joined:
        module.sweep_begin()

    def set_count(t: int) -> None:
        if t not in counts:
            raise ValueError(f"sweep: count {t} is not one of {counts}.")
        for layer in layers:
            layer._select_count(t)

    try:
        yield set_count
    finally:
        for layer in layers:
            layer._end_sweep()
        for module in joined:
            module.sweep_end()


@contextlib.contextmanager
def deferred_finite_checks(model: nn.Module) -> Iterator[None]:
    """Queue the finite checks of ``model``'s recurrences made inside the block and make them
    when it ends, with one host synchronisation for all of them; the first layer whose state
    is not finite then raises its FloatingPointError (naming the layer and the step, as an
    immediate check would). A layer already deferred by an enclosing block is left to it. If
    the block raises, nothing is checked."""
    model = getattr(model, "module", model)
    layers = [
        m for m in model.modules() if isinstance(m, RecurrenceControls) and m._finite_queue is None
    ]
    queue: list = []
    for layer in layers:
        layer._finite_queue = queue
    try:
        yield
    finally:
        for layer in layers:
            layer._finite_queue = None
    if queue and not bool(torch.stack([flag for _, flag, _, _ in queue]).all()):
        for layer, flag, x, start in queue:
            if not bool(flag):
                layer._raise_nonfinite(x, start)

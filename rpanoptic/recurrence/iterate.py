"""The graph-free fixed-point iteration at inference: plain (``picard_iterate``) and with
Anderson acceleration (``anderson_iterate``), both halting per sample.

The plain iteration h_{t+1} = F(x, h_t) closes the distance to the fixed point by about the
spectral radius rho of F's Jacobian per step; a recurrence that the LCP holds just under tau
(0.9-0.98) therefore needs tens of steps to settle, and per-sample halting saves little within
the trained N (the demo's model: 8-9 of 10 steps at a tolerance of 0.05). Anderson
acceleration (type II, Walker and Ni 2011) spends the same one evaluation of F per step but
feeds F the combination of the last ``memory`` evaluations whose linearised residual is
smallest:

    g_k = F(h_k) - h_k,   dG = [g_{i+1} - g_i],   dF = [F(h_{i+1}) - F(h_i)]  (last m)
    gamma = argmin || g_k - dG gamma ||,          h_{k+1} = F(h_k) - dF gamma.

On a linear F with m at least the state's dimension it is GMRES: the iterate built from
dimension + 1 evaluations is the fixed point, which the next evaluation returns (tested). The
least-squares problem is per sample (the whole batch when a BatchNorm couples it). Its Gram
matrix is accumulated in the state's dtype (enough for halting tolerances down to about 1e-5 in
float32) and solved in float64 with a ridge of 1e-10 of its trace: a column that has stopped
changing gets no weight instead of a singular solve, and a non-finite solution falls back to
the plain step for that sample.

What is returned and counted matches the plain iteration: the output of a sample is the
latest F(h_k) (never an untested combination), its steps are the evaluations of F it took,
and halting stops it once ||F(h_k) - h_k|| / ||h_k|| < ``halt_tol``, the plain iteration's
relative change. Only inference uses it: training keeps the N plain steps that C-RBP's
gradient is defined at.
"""

from typing import Callable, Dict, Sequence, Tuple

import torch

from ._batch import as_groups, expand_as, group_norm

__all__ = ["picard_iterate", "anderson_iterate"]

Record = Dict[int, Tuple[torch.Tensor, torch.Tensor]]

_RIDGE = 1e-10


def picard_iterate(
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    h: torch.Tensor,
    limit: int,
    halt_tol: float,
    coupled: bool,
    record: Sequence[int] = (),
) -> Tuple[torch.Tensor, torch.Tensor, Record]:
    """Run ``limit`` steps h <- step(x, h), halting per group when ``halt_tol > 0`` (a halted
    sample keeps its state, so later counts in ``record`` repeat it).

    Returns the final state, the steps per sample (B,) and {t: (h_t, steps_t)} for t in
    ``record``. Call it under ``torch.no_grad()``.
    """
    steps = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    active = torch.ones_like(steps, dtype=torch.bool)
    saved, everyone = {}, True  # everyone: no sample has halted yet (known on the host)
    for t in range(1, limit + 1):
        h_next = step(x, h)
        if halt_tol > 0:
            change = group_norm(h_next - h, coupled) / group_norm(h, coupled).clamp_min(1e-12)
            h = h_next if everyone else torch.where(expand_as(active, h), h_next, h)
            steps += active
            active &= (change >= halt_tol).expand_as(active)
        else:
            h = h_next
            steps += 1
        if t in record:
            saved[t] = (h, steps.clone())
        if halt_tol > 0:
            running = int(active.sum())  # one host sync per step (inference)
            if running == 0:
                break
            everyone = running == active.numel()
    for t in record:
        saved.setdefault(t, (h, steps.clone()))
    return h, steps, saved


def _mixing_weights(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """gamma (groups, m) solving the normal equations ``gram`` gamma = ``rhs`` of
    min ||g - dG gamma|| per group (gram = dG dG^T, rhs = dG g), in float64 with a ridge of
    ``_RIDGE`` times the trace. Zero where the solve is not finite (then the step is plain)."""
    gram, rhs = gram.double(), rhs.double()
    trace = gram.diagonal(dim1=1, dim2=2).sum(1).clamp_min(1e-300)
    eye = torch.eye(gram.shape[1], dtype=gram.dtype, device=gram.device)
    gamma = torch.linalg.solve(gram + (_RIDGE * trace)[:, None, None] * eye, rhs)
    finite = torch.isfinite(gamma).all(1, keepdim=True)
    return torch.where(finite, gamma, torch.zeros_like(gamma))


class _History:
    """The last ``memory`` differences dF, dG (groups, memory, D) in ring buffers written in
    place, and their Gram matrix dG dG^T updated by one row per step (no stacking)."""

    def __init__(self, like: torch.Tensor, memory: int):
        groups, size = like.shape
        self.d_f = like.new_empty(groups, memory, size)
        self.d_g = like.new_empty(groups, memory, size)
        self.gram = like.new_zeros(groups, memory, memory)
        self.memory, self.count = memory, 0

    def push(self, f, prev_f, g, prev_g) -> None:
        slot = self.count % self.memory
        torch.sub(f, prev_f, out=self.d_f[:, slot])
        torch.sub(g, prev_g, out=self.d_g[:, slot])
        self.count += 1
        n = min(self.count, self.memory)
        row = torch.bmm(self.d_g[:, :n], self.d_g[:, slot].unsqueeze(2)).squeeze(2)
        self.gram[:, slot, :n] = row
        self.gram[:, :n, slot] = row

    def mix(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """F(h_k) - dF gamma, gamma minimising ||g_k - dG gamma||."""
        n = min(self.count, self.memory)
        d_g, d_f = self.d_g[:, :n], self.d_f[:, :n]
        gamma = _mixing_weights(self.gram[:, :n, :n], torch.bmm(d_g, g.unsqueeze(2)).squeeze(2))
        return f - torch.bmm(gamma.to(f.dtype).unsqueeze(1), d_f).squeeze(1)


def anderson_iterate(
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    h: torch.Tensor,
    limit: int,
    halt_tol: float,
    memory: int,
    coupled: bool,
    record: Sequence[int] = (),
) -> Tuple[torch.Tensor, torch.Tensor, Record]:
    """Run up to ``limit`` evaluations of ``step(x, h)`` with Anderson mixing of ``memory``
    (>= 1) differences, halting per group when ``halt_tol > 0``.

    Returns, as the plain iteration does, the output state (the last F(h_k) of each sample),
    the evaluations per sample (B,) and {t: (output_t, steps_t)} for t in ``record``. Call it
    under ``torch.no_grad()``.
    """
    steps = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    active = torch.ones_like(steps, dtype=torch.bool)
    halting = halt_tol > 0
    out, saved, everyone = h, {}, True  # everyone: no sample has halted yet (on the host)
    prev = history = None
    for t in range(1, limit + 1):
        f = step(x, h)
        g = as_groups(f - h, coupled)
        out = f if everyone else torch.where(expand_as(active, f), f, out)
        steps += active
        if halting:
            change = torch.linalg.vector_norm(g, dim=1) / group_norm(h, coupled).clamp_min(1e-12)
            active &= (change >= halt_tol).expand_as(active)
        if t in record:
            saved[t] = (out, steps.clone())
        if halting:
            running = int(active.sum())  # one host sync per step
            if running == 0:
                break
            everyone = running == active.numel()
        if t == limit:
            break
        f_groups = as_groups(f, coupled)
        if prev is not None:
            history = history or _History(g, memory)
            history.push(f_groups, prev[0], g, prev[1])
        prev = (f_groups, g)
        mixed = f if history is None else history.mix(f_groups, g).view_as(f)
        h = mixed if everyone else torch.where(expand_as(active, f), mixed, h)
    for t in record:
        saved.setdefault(t, (out, steps.clone()))
    return out, steps, saved

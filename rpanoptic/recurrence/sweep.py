"""The timestep sweep: evaluate a model at several inference step counts in one pass.

``with sweep(model, counts) as set_count:`` puts every :class:`~.runner.Recurrence` in
``model`` in sweep mode: for a given input a recurrence iterates once to ``max(counts)``,
keeps its state at every count, and answers ``set_count(t)`` forwards of the same input from
that cache. Other modules join through a small protocol: any module with ``sweep_begin()`` and
``sweep_end()`` methods has them called on entry and exit (the RFPN backbone uses it to compute
its feed-forward features once per image).
"""

import contextlib
from typing import Callable, Iterator, Sequence

from torch import nn

from .runner import Recurrence

__all__ = ["sweep"]


@contextlib.contextmanager
def sweep(model: nn.Module, counts: Sequence[int]) -> Iterator[Callable[[int], None]]:
    """Sweep mode for every recurrence of ``model`` (DDP-wrapped or not, or a bare
    :class:`Recurrence`); yields ``set_count(t)``, which selects the count the next forwards
    answer (one of ``counts``; the largest is selected on entry)."""
    counts = sorted({int(c) for c in counts}) if counts else []
    if not counts or counts[0] < 1:
        raise ValueError(f"sweep: counts must be integers >= 1, got {list(counts)}.")
    model = getattr(model, "module", model)
    layers = [m for m in model.modules() if isinstance(m, Recurrence)]
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

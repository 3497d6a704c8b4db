"""Named ranges for the profiler: where a recurrence's time goes.

Each phase of a training or inference step is wrapped in ``torch.profiler.record_function``
under the name ``recurrence/<phase>``, so a ``torch.profiler`` trace of any model that uses
:class:`~.runner.Recurrence` (a Detectron2 training step included) shows them beside the
operators they contain. ``tools/benchmark.py profile`` tabulates them. Outside a profiler a
range costs a few microseconds, a handful of times per step. Under ``torch.jit`` tracing
(export) no range is recorded, so traced graphs stay free of profiler operators.
"""

import contextlib

import torch

__all__ = ["PHASES", "phase"]

PHASES = {
    "graph_free_steps": "the steps run without a graph (rbp/crbp's first N - 1, inference)",
    "unrolled_steps": "the steps run with a graph (bptt/cbptt's N, penalty included)",
    "implicit_step": "rbp/crbp's last step with its penalty's value",
    "backward/recompute": (
        "the last step rebuilt in backward (crbp with lcp_gradient 'jvp': in forward mode, "
        "its tangent J w for the penalty included)"
    ),
    "backward/neumann_series": "the K vector-Jacobian products of the series",
    "backward/lcp": (
        "the penalty's differentiable term: <v, J w> ('jvp') or its vector-Jacobian product "
        "built for a double backward"
    ),
    "backward/parameter_gradients": "the gradients of the parameters and the input",
}
"""The phases, by name, with what each covers."""


def phase(name: str):
    """A context manager that marks ``recurrence/<name>`` in a profiler trace."""
    if name not in PHASES:
        raise ValueError(f"unknown recurrence phase {name!r}; known: {sorted(PHASES)}")
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return contextlib.nullcontext()
    return torch.profiler.record_function(f"recurrence/{name}")

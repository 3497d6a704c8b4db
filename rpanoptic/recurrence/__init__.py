"""The recurrence engine: pure PyTorch, no Detectron2 import. Usable by any PyTorch model.

- :class:`HGRUCell` -- one hGRU step ``forward(x, h) -> h_next``.
- :class:`Recurrence` -- runs a cell for N steps and trains it with bptt, cbptt, rbp or crbp;
  steered with ``using()``/``recording()`` (``controls.py``).
- :func:`sweep` -- several inference step counts in one pass.
- :func:`neumann_series`, :class:`ImplicitStep` -- recurrent back-propagation.
- :func:`lcp_penalty` -- the Lipschitz coefficient penalty.
- :func:`fixed_point_residual`, :func:`spectral_radius` -- convergence diagnostics.
"""

from .controls import StateRecord, deferred_finite_checks, sweep
from .diagnostics import fixed_point_residual, spectral_radius
from .hgru import HGRUCell
from .lcp import (
    LCP_REDUCTIONS,
    LCP_VECTORS,
    lcp_from_vjp,
    lcp_penalty,
    ones_vjp,
    power_lcp,
    power_vector,
)
from .rbp import ImplicitStep, ImplicitStepOptions, neumann_series
from .runner import GRAD_MODES, Recurrence

__all__ = [
    "HGRUCell",
    "Recurrence",
    "GRAD_MODES",
    "StateRecord",
    "sweep",
    "deferred_finite_checks",
    "ImplicitStep",
    "ImplicitStepOptions",
    "neumann_series",
    "lcp_penalty",
    "LCP_REDUCTIONS",
    "LCP_VECTORS",
    "power_lcp",
    "power_vector",
    "lcp_from_vjp",
    "ones_vjp",
    "fixed_point_residual",
    "spectral_radius",
]

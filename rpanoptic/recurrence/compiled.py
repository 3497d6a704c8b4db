"""The graph-free steps of a recurrence through ``torch.compile`` (``compile_steps=True``).

Most of a C-RBP training step is spent in steps that build no graph: the N - 1 forward steps
before the implicit one (about half of the step at N = 20), and every step at inference. In
eager mode each hGRU step runs its gates, normalisations and non-linearities as some thirty
separate element-wise kernels; compiled, they fuse around the convolutions (measured on one CPU
thread, mask-head shape 8 x 256 x 14 x 14: 48 ms eager, 28 ms compiled).

Only graph-free steps are compiled. The steps that are differentiated (BPTT's unrolled steps,
the implicit step, its Neumann series and the penalty's gradient) stay eager: they are where the
gradients are pinned by tests against exact answers, and capturing them did not pay where it was
measured. The K products of the Neumann series compiled as one graph (``torch.func.vjp`` of the
cell under ``torch.compile``, 8 x 256 x 14 x 14, one CPU thread) took 1.15-1.2x the eager
series' time, with the softplus as PyTorch's own function; with the cell's custom softplus the
compiled graph broke at its backward and recompiled. CUDA graphs of these loops have not been
tried (no GPU was available to test them).

The first call for a new input shape compiles (tens of seconds on a CPU; it needs a C++
compiler there); a shape that varies, such as the number of RoIs of a mask head, is compiled
once more as a dynamic shape. When compilation fails (no compiler, an unsupported build), the
recurrence warns once, naming the layer and the error, and runs eager from then on: results
are the same, only slower.
"""

import logging
import warnings
from typing import Callable

import torch
from torch import nn

__all__ = ["CompiledStep"]

logger = logging.getLogger(__name__)


class CompiledStep:
    """``step(x, h) -> h_next``: ``cell``'s forward, compiled on first use, eager after a
    failure. Call it only where no graph is needed (under ``torch.no_grad()``)."""

    def __init__(self, cell: nn.Module, name: str, compile_fn: Callable = None):
        self.cell, self.name = cell, name
        self._compile_fn = compile_fn or torch.compile
        self._compiled = None
        self.failed = False

    def __call__(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.failed or torch.jit.is_tracing() or torch.is_grad_enabled():
            return self.cell(x, h)
        try:
            if self._compiled is None:
                self._compiled = self._compile_fn(self.cell)
            return self._compiled(x, h)
        except Exception as error:  # compilation (or a compiled kernel) failed: run eager
            self.failed = True
            detail = (str(error).strip().splitlines() or [""])[0][:200]
            message = (
                f"Recurrence {self.name!r}: torch.compile of the cell's graph-free steps failed "
                f"({type(error).__name__}: {detail}); running them eager from now on (same "
                "results, slower). On a CPU, compilation needs a C++ compiler (g++); set "
                "compile_steps=False (MODEL.RECURRENT.COMPILE False) to silence this."
            )
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            logger.warning(message)
            return self.cell(x, h)

    def __getstate__(self):  # copies and pickles carry the cell, not the compiled code
        return {"cell": self.cell, "name": self.name, "failed": self.failed}

    def __setstate__(self, state):
        self.__init__(state["cell"], state["name"])
        self.failed = state["failed"]

"""Training hooks: LCPHook adds the Lipschitz coefficient penalty to the loss and logs recurrence
diagnostics; ParameterStatsHook logs how far each group of parameters moves."""

import contextlib
import logging
from typing import Dict, Optional

import torch
from detectron2.engine import HookBase

from ..modeling.recurrent_config import norm_of, parameter_groups, recurrent_layers
from ..recurrence import Recurrence, StateRecord

__all__ = ["LCPHook", "ParameterStatsHook"]

logger = logging.getLogger(__name__)


class LCPHook(HookBase):
    """Turns BPTT/RBP into C-BPTT/C-RBP for any Detectron2 trainer.

    Adds ``loss_lcp = lcp_weight * sum of every recurrent layer's .lcp`` to the loss dict the
    model returns in training (a forward hook on the model, inside DDP when wrapped, so the
    trainer sums it like any other loss), and every ``period`` iterations puts per-layer
    diagnostics in the event storage (so TensorBoard and metrics.json) under
    ``recurrent/<layer>/<metric>``: fixed-point residual, spectral-radius estimate, Neumann
    fallbacks, mean Neumann terms, steps and the layer's penalty.

    Args:
        cfg: reads MODEL.RECURRENT.LCP_WEIGHT and DIAGNOSTICS_PERIOD when given; otherwise
            ``lcp_weight`` and ``period``.
        power_iters: vector-Jacobian products of the spectral-radius estimate.
        max_samples: diagnostics look at the first this many samples of a layer's batch.
    """

    def __init__(
        self,
        cfg=None,
        *,
        lcp_weight: float = 1e-3,
        period: int = 100,
        power_iters: int = 10,
        max_samples: int = 4,
    ):
        if cfg is not None:
            lcp_weight = cfg.MODEL.RECURRENT.LCP_WEIGHT
            period = cfg.MODEL.RECURRENT.DIAGNOSTICS_PERIOD
        self.lcp_weight, self.period = float(lcp_weight), int(period)
        self.power_iters, self.max_samples = power_iters, max_samples
        self.layers: Dict[str, Recurrence] = {}
        self._handles = []
        self._checked = False
        self._collecting = contextlib.ExitStack()  # each layer's using(lcp_collected=True)
        self._recording = contextlib.ExitStack()  # each layer's recording() during a due step
        self._records: Dict[str, StateRecord] = {}

    def before_train(self):
        model = self.trainer.model
        inner = getattr(model, "module", model)
        self.layers = recurrent_layers(inner)
        if not self.layers:
            logger.warning("LCPHook: the model has no recurrent layer; loss_lcp is not added.")
            return
        for layer in self.layers.values():
            self._collecting.enter_context(layer.using(lcp_collected=True))
        self._handles = [
            inner.register_forward_pre_hook(self._clear_penalties),
            inner.register_forward_hook(self._add_penalty),
        ]

    def after_train(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._collecting.close()
        self._recording.close()

    def _clear_penalties(self, module, inputs):
        for layer in self.layers.values():  # a layer not run in this forward must add nothing
            layer.lcp = None

    def _add_penalty(self, module, inputs, output):
        if not (module.training and torch.is_grad_enabled() and isinstance(output, dict)):
            return None
        penalties = [layer.lcp for layer in self.layers.values() if layer.lcp is not None]
        if not penalties:
            return None
        loss = self.lcp_weight * torch.stack(penalties).sum()
        if not self._checked:
            if not loss.requires_grad:
                raise RuntimeError(
                    "LCPHook: loss_lcp has no gradient path to the recurrent parameters (are they "
                    "frozen, or is the model run under torch.no_grad?); C-RBP cannot train them."
                )
            self._checked = True
        output = dict(output)
        output["loss_lcp"] = loss
        return output

    def _due(self, iteration: int) -> bool:
        return self.period > 0 and (iteration + 1) % self.period == 0

    def before_step(self):
        if self._due(self.trainer.iter):
            self._records = {
                name: self._recording.enter_context(layer.recording())
                for name, layer in self.layers.items()
            }

    def after_step(self):
        if not self._due(self.trainer.iter):
            return
        storage = self.trainer.storage
        for name, layer in self.layers.items():
            scalars = self._diagnostics(layer, self._records.get(name))
            for metric, value in scalars.items():
                storage.put_scalar(f"recurrent/{name}/{metric}", value, smoothing_hint=False)
            layer.reset_neumann_stats()
        self._recording.close()  # the recorded states are dropped
        self._records = {}

    def _diagnostics(self, layer: Recurrence, record: Optional[StateRecord]) -> Dict[str, float]:
        if record is None or record.state is None or record.state.shape[0] == 0:
            return {}
        n = self.max_samples
        d = layer.diagnostics(record.input[:n], record.state[:n], self.power_iters)
        out = {
            "residual": d["residual"].mean(),
            "spectral_radius": d["spectral_radius"].max(),
            "neumann_fallbacks": d["neumann_fallbacks"],
            "neumann_terms": d["neumann_terms"],
            "steps": d["steps"],
        }
        lcp: Optional[torch.Tensor] = layer.lcp
        if lcp is not None:
            out["lcp"] = lcp.detach()
        return {k: float(v) for k, v in out.items()}


class ParameterStatsHook(HookBase):
    """Logs, every ``period`` iterations, how much each group of parameters learns.

    For each group of :func:`rpanoptic.modeling.parameter_groups` (recurrent cells, RFPN
    scales, backbone, FPN, heads) it puts ``params/<group>/<metric>`` in the event storage:
    ``weight_norm`` (L2 norm of the group after the step), ``grad_norm`` (L2 norm of the
    gradient the step used, penalty included), ``update_norm`` (L2 norm of the change the
    optimizer made) and ``update_ratio`` (update_norm / weight_norm). A group whose
    update_ratio stays orders of magnitude below the others' is not learning.

    Args:
        cfg: reads MODEL.RECURRENT.DIAGNOSTICS_PERIOD when given; otherwise ``period``.
    """

    def __init__(self, cfg=None, *, period: int = 100):
        self.period = int(cfg.MODEL.RECURRENT.DIAGNOSTICS_PERIOD if cfg is not None else period)
        self.groups: Dict[str, Dict[str, torch.nn.Parameter]] = {}
        self._before: Optional[Dict[str, list]] = None

    def before_train(self):
        self.groups = parameter_groups(self.trainer.model)

    def _due(self, iteration: int) -> bool:
        return self.period > 0 and (iteration + 1) % self.period == 0

    def before_step(self):
        self._before = None
        if self._due(self.trainer.iter):
            self._before = {
                g: [p.detach().clone() for p in params.values()]
                for g, params in self.groups.items()
            }

    @torch.no_grad()
    def after_step(self):
        if self._before is None:
            return
        storage = self.trainer.storage
        for group, params in self.groups.items():
            weight = norm_of(list(params.values()))
            grad = norm_of([p.grad for p in params.values() if p.grad is not None])
            update = norm_of([p - b for p, b in zip(params.values(), self._before[group])])
            stats = {
                "weight_norm": weight,
                "grad_norm": grad,
                "update_norm": update,
                "update_ratio": update / max(weight, 1e-12),
            }
            for metric, value in stats.items():
                storage.put_scalar(f"params/{group}/{metric}", value, smoothing_hint=False)
        self._before = None

"""Build recurrences from a Detectron2 config, validate their keys, and find them in a model."""

import logging
from typing import Dict, Sequence

import torch
from torch import nn

from ..recurrence import HGRUCell, Recurrence
from ..recurrence.arguments import Rule, at_least, is_number
from ..recurrence.hgru import ARGUMENTS as HGRU_ARGUMENTS
from ..recurrence.runner import ARGUMENTS as RECURRENCE_ARGUMENTS

__all__ = [
    "build_recurrence",
    "validate_recurrent_config",
    "recurrent_layers",
    "parameter_groups",
    "warn_unhooked_lcp",
    "norm_of",
]

logger = logging.getLogger(__name__)


# config key -> (the engine's rules, the argument the key becomes): the same rule and words
_ENGINE_KEYS = {
    "MODEL.RECURRENT.GRAD": (RECURRENCE_ARGUMENTS, "grad"),
    "MODEL.RECURRENT.TIMESTEPS": (RECURRENCE_ARGUMENTS, "timesteps"),
    "MODEL.RECURRENT.TEST_TIMESTEPS": (RECURRENCE_ARGUMENTS, "test_timesteps"),
    "MODEL.RECURRENT.NEUMANN_STEPS": (RECURRENCE_ARGUMENTS, "neumann_steps"),
    "MODEL.RECURRENT.NEUMANN_RTOL": (RECURRENCE_ARGUMENTS, "neumann_rtol"),
    "MODEL.RECURRENT.BACKWARD_SOLVER": (RECURRENCE_ARGUMENTS, "backward_solver"),
    "MODEL.RECURRENT.LCP_REDUCTION": (RECURRENCE_ARGUMENTS, "lcp_reduction"),
    "MODEL.RECURRENT.LCP_TAU": (RECURRENCE_ARGUMENTS, "lcp_tau"),
    "MODEL.RECURRENT.LCP_VECTOR": (RECURRENCE_ARGUMENTS, "lcp_vector"),
    "MODEL.RECURRENT.LCP_POWER_ITERS": (RECURRENCE_ARGUMENTS, "lcp_power_iters"),
    "MODEL.RECURRENT.HALT_TOL": (RECURRENCE_ARGUMENTS, "halt_tol"),
    "MODEL.RECURRENT.TEST_SOLVER": (RECURRENCE_ARGUMENTS, "test_solver"),
    "MODEL.RECURRENT.ANDERSON_MEMORY": (RECURRENCE_ARGUMENTS, "anderson_memory"),
    "MODEL.RECURRENT.COMPILE": (RECURRENCE_ARGUMENTS, "compile_steps"),
    "MODEL.HGRU.KERNEL_SIZE": (HGRU_ARGUMENTS, "kernel_size"),
    "MODEL.HGRU.NORM": (HGRU_ARGUMENTS, "norm"),
    "MODEL.HGRU.GN_GROUPS": (HGRU_ARGUMENTS, "gn_groups"),
    "MODEL.HGRU.NONLINEARITY": (HGRU_ARGUMENTS, "nonlinearity"),
}
# keys that only the Detectron2 layer reads (the hook, the optimizer, the logging)
_CONFIG_KEYS = {
    "MODEL.RECURRENT.LCP_WEIGHT": Rule(lambda v: is_number(v) and v >= 0, "a number >= 0"),
    "MODEL.RECURRENT.LR_FACTOR": Rule(lambda v: is_number(v) and v > 0, "a number > 0"),
    "MODEL.RECURRENT.DIAGNOSTICS_PERIOD": at_least(0, "0 disables"),
}
_RULES = {**{k: rules[arg] for k, (rules, arg) in _ENGINE_KEYS.items()}, **_CONFIG_KEYS}


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def validate_recurrent_config(cfg) -> None:
    """Raise ValueError naming the key, the value and the allowed values for a bad setting."""
    if "RECURRENT" not in cfg.MODEL:
        raise ValueError(
            "The config has no MODEL.RECURRENT: call rpanoptic.add_rpanoptic_config(cfg) before "
            "merging an rpanoptic config file."
        )
    for key, rule in _RULES.items():
        value = _get(cfg, key)
        if not rule.ok(value):
            raise ValueError(f"Config {key} = {value!r} is invalid; allowed: {rule.allowed}.")
    rfpn = cfg.MODEL.BACKBONE.NAME == "build_resnet_rfpn_backbone"
    if rfpn and "RFPN" in cfg.MODEL and not list(cfg.MODEL.RFPN.LEVELS):
        raise ValueError(
            "Config MODEL.RFPN.LEVELS = [] is invalid with MODEL.BACKBONE.NAME = "
            "'build_resnet_rfpn_backbone': it would build no recurrent layer; allowed: one or "
            "more FPN levels such as ['p2', 'p3'] (or use build_resnet_fpn_backbone)."
        )


def build_recurrence(cfg, channels: int, name: str = "recurrence") -> Recurrence:
    """A :class:`Recurrence` (named ``name``, its module path in the model) of an
    :class:`HGRUCell` with ``channels``, as MODEL.RECURRENT and
    MODEL.HGRU say. Reads: MODEL.RECURRENT.{GRAD, TIMESTEPS, TEST_TIMESTEPS, NEUMANN_STEPS,
    NEUMANN_RTOL, BACKWARD_SOLVER, LCP_TAU, LCP_REDUCTION, LCP_VECTOR, LCP_POWER_ITERS, HALT_TOL,
    TEST_SOLVER, ANDERSON_MEMORY, CHECK_FINITE, COMPILE},
    MODEL.HGRU.{KERNEL_SIZE, NORM, GN_GROUPS, NONLINEARITY}. The keys are validated once by
    :func:`rpanoptic.modeling.build_model` (:func:`validate_recurrent_config`); bad values that
    reach the engine still fail there, named by argument."""
    r, g = cfg.MODEL.RECURRENT, cfg.MODEL.HGRU
    if g.NORM == "GN" and channels % g.GN_GROUPS != 0:
        raise ValueError(
            f"Config MODEL.HGRU.GN_GROUPS = {g.GN_GROUPS} does not divide the recurrent layer's "
            f"{channels} channels; allowed: a divisor of {channels}."
        )
    cell = HGRUCell(
        channels,
        kernel_size=g.KERNEL_SIZE,
        norm=g.NORM,
        nonlinearity=g.NONLINEARITY,
        timesteps=r.TIMESTEPS,
        gn_groups=g.GN_GROUPS,
    )
    return Recurrence(
        cell,
        r.TIMESTEPS,
        grad=r.GRAD,
        neumann_steps=r.NEUMANN_STEPS,
        lcp_tau=r.LCP_TAU,
        test_timesteps=r.TEST_TIMESTEPS,
        halt_tol=r.HALT_TOL,
        test_solver=r.TEST_SOLVER,
        anderson_memory=r.ANDERSON_MEMORY,
        neumann_rtol=r.NEUMANN_RTOL,
        backward_solver=r.BACKWARD_SOLVER,
        check_finite=r.CHECK_FINITE,
        lcp_reduction=r.LCP_REDUCTION,
        lcp_vector=r.LCP_VECTOR,
        lcp_power_iters=r.LCP_POWER_ITERS,
        name=name,
        compile_steps=r.COMPILE,
    )


def recurrent_layers(model: nn.Module) -> Dict[str, Recurrence]:
    """Every :class:`Recurrence` in ``model`` (unwrapping DDP), by module path."""
    model = getattr(model, "module", model)
    return {n: m for n, m in model.named_modules() if isinstance(m, Recurrence)}


PARAMETER_GROUPS = ("recurrent", "rfpn_scale", "backbone", "fpn", "heads")


def parameter_groups(model: nn.Module) -> Dict[str, Dict[str, nn.Parameter]]:
    """The trainable parameters of a (Detectron2) model in groups, by name (unwrapping DDP).

    Groups: ``recurrent`` (every :class:`Recurrence`'s cell), ``rfpn_scale`` (the RFPN levels'
    residual scales: what is left of ``backbone.rfpn``), ``backbone`` (``backbone.bottom_up``),
    ``fpn`` (the rest of the backbone) and ``heads`` (everything else, e.g. the RPN, the ROI
    heads, the semantic head and a recurrent mask head's read-out). Empty groups are omitted.
    """
    model = getattr(model, "module", model)
    prefixes = tuple(f"{name}." for name in recurrent_layers(model))
    groups: Dict[str, Dict[str, nn.Parameter]] = {g: {} for g in PARAMETER_GROUPS}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith(prefixes):
            group = "recurrent"
        elif name.startswith("backbone.rfpn."):
            group = "rfpn_scale"
        elif name.startswith("backbone.bottom_up."):
            group = "backbone"
        elif name.startswith("backbone."):
            group = "fpn"
        else:
            group = "heads"
        groups[group][name] = param
    return {g: params for g, params in groups.items() if params}


_warned = set()


def warn_unhooked_lcp(recurrence: Recurrence) -> None:
    """Warn once per process when a constrained mode trains with no LCPHook to use its penalty."""
    if recurrence.training and recurrence.constrained and not recurrence.lcp_collected:
        if recurrence.grad not in _warned:
            _warned.add(recurrence.grad)
            plain = {"cbptt": "bptt", "crbp": "rbp"}[recurrence.grad]
            logger.warning(
                "MODEL.RECURRENT.GRAD=%r computes the Lipschitz coefficient penalty, but no "
                "rpanoptic.engine.LCPHook adds it to the loss: this trains plain %s. Register "
                "LCPHook(cfg) with your trainer (rpanoptic.engine.Trainer does).",
                recurrence.grad,
                plain,
            )


def norm_of(tensors: Sequence[torch.Tensor]) -> float:
    """L2 norm of a list of tensors taken together (0 for none)."""
    if not tensors:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([t.detach().norm() for t in tensors])))

"""Build recurrences from a Detectron2 config, validate their keys, and find them in a model.

Every key that :func:`rpanoptic.add_rpanoptic_config` adds has one rule and one destination
here: a key of the engine (MODEL.RECURRENT.*, MODEL.HGRU.*) becomes exactly one argument of
:class:`Recurrence` or :class:`HGRUCell` and is checked by that argument's own rule; the others
are read by the Detectron2 layer and carry their rule here. :func:`config_keys` lists them all
(``docs/CONFIG.md`` is generated from it, see ``config_reference.py``).
"""

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..recurrence import HGRUCell, Recurrence
from ..recurrence.arguments import Rule, at_least, flag, is_number
from ..recurrence.hgru import ARGUMENTS as HGRU_ARGUMENTS
from ..recurrence.runner import ARGUMENTS as RECURRENCE_ARGUMENTS

__all__ = [
    "build_recurrence",
    "validate_recurrent_config",
    "check_key",
    "check_rfpn_levels",
    "check_rfpn_widths",
    "RFPN_PLACEMENTS",
    "config_keys",
    "DERIVED_ARGUMENTS",
    "recurrent_layers",
    "parameter_groups",
    "warn_unhooked_lcp",
    "norm_of",
]

logger = logging.getLogger(__name__)

_ARGUMENT_RULES = {Recurrence: RECURRENCE_ARGUMENTS, HGRUCell: HGRU_ARGUMENTS}
# config key -> (the engine class, the argument the key becomes), in the classes' signature
# order; the key is checked by that argument's rule (one rule object, one wording).
_ENGINE_KEYS = {
    "MODEL.RECURRENT.TIMESTEPS": (Recurrence, "timesteps"),
    "MODEL.RECURRENT.GRAD": (Recurrence, "grad"),
    "MODEL.RECURRENT.NEUMANN_STEPS": (Recurrence, "neumann_steps"),
    "MODEL.RECURRENT.NEUMANN_RTOL": (Recurrence, "neumann_rtol"),
    "MODEL.RECURRENT.BACKWARD_SOLVER": (Recurrence, "backward_solver"),
    "MODEL.RECURRENT.LCP_TAU": (Recurrence, "lcp_tau"),
    "MODEL.RECURRENT.LCP_REDUCTION": (Recurrence, "lcp_reduction"),
    "MODEL.RECURRENT.LCP_VECTOR": (Recurrence, "lcp_vector"),
    "MODEL.RECURRENT.LCP_POWER_ITERS": (Recurrence, "lcp_power_iters"),
    "MODEL.RECURRENT.LCP_GRADIENT": (Recurrence, "lcp_gradient"),
    "MODEL.RECURRENT.TEST_TIMESTEPS": (Recurrence, "test_timesteps"),
    "MODEL.RECURRENT.HALT_TOL": (Recurrence, "halt_tol"),
    "MODEL.RECURRENT.TEST_SOLVER": (Recurrence, "test_solver"),
    "MODEL.RECURRENT.ANDERSON_MEMORY": (Recurrence, "anderson_memory"),
    "MODEL.RECURRENT.COMPILE": (Recurrence, "compile_steps"),
    "MODEL.RECURRENT.CHECK_FINITE": (Recurrence, "check_finite"),
    "MODEL.HGRU.KERNEL_SIZE": (HGRUCell, "kernel_size"),
    "MODEL.HGRU.NORM": (HGRUCell, "norm"),
    "MODEL.HGRU.NONLINEARITY": (HGRUCell, "nonlinearity"),
    "MODEL.HGRU.GN_GROUPS": (HGRUCell, "gn_groups"),
}
# The engine's arguments that no key of their own sets, and where their values come from.
DERIVED_ARGUMENTS = {
    "Recurrence(cell)": "the HGRUCell built from MODEL.HGRU.*",
    "Recurrence(name)": "the layer's module path, e.g. backbone.rfpn.p3.recurrence",
    "HGRUCell(channels)": (
        "the level's MODEL.RFPN.WIDTHS, else MODEL.FPN.OUT_CHANNELS (RFPN); "
        "MODEL.ROI_MASK_HEAD.CONV_DIM (mask head)"
    ),
    "HGRUCell(timesteps)": "MODEL.RECURRENT.TIMESTEPS (it only initialises the gate biases)",
}
_LEVELS = Rule(
    lambda v: isinstance(v, (list, tuple)) and all(isinstance(level, str) for level in v),
    "a list of FPN levels ('p2' ... 'p6' with the default MODEL.FPN.IN_FEATURES); at least one "
    "with build_resnet_rfpn_backbone",
)
RFPN_PLACEMENTS = ("output", "topdown")
"""Where an RFPN level's recurrence sits: on the level's output, or in the top-down path before
the output convolution (finer levels receive it); see ``rfpn.py``."""
_WIDTHS = Rule(
    lambda v: isinstance(v, (list, tuple))
    and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in v),
    "a list of positive integers, one per level of MODEL.RFPN.LEVELS, or [] (every recurrence at "
    "MODEL.FPN.OUT_CHANNELS)",
)
# keys the Detectron2 layer reads itself: key -> (its rule, the argument it becomes)
_CONFIG_KEYS: Dict[str, Tuple[Rule, str]] = {
    "MODEL.RECURRENT.LCP_WEIGHT": (
        Rule(lambda v: is_number(v) and v >= 0, "a number >= 0"),
        "LCPHook(lcp_weight)",
    ),
    "MODEL.RECURRENT.LR_FACTOR": (
        Rule(lambda v: is_number(v) and v > 0, "a number > 0"),
        "scale_recurrent_lr(factor)",
    ),
    "MODEL.RECURRENT.DIAGNOSTICS_PERIOD": (
        at_least(0, "0 disables"),
        "LCPHook(period), ParameterStatsHook(period)",
    ),
    "MODEL.RFPN.LEVELS": (_LEVELS, "RFPN(recurrences)"),
    "MODEL.RFPN.SCALE_INIT": (Rule(is_number, "a number"), "RFPN(scale_init)"),
    "MODEL.RFPN.PLACEMENT": (
        Rule(lambda v: v in RFPN_PLACEMENTS, f"one of {', '.join(map(repr, RFPN_PLACEMENTS))}"),
        "RFPN(placement)",
    ),
    "MODEL.RFPN.WIDTHS": (_WIDTHS, "RFPN(widths)"),
    "MODEL.DDP_FIND_UNUSED_PARAMETERS": (flag(), "create_ddp_model(find_unused_parameters)"),
}
_RULES = {
    **{key: _ARGUMENT_RULES[owner][arg] for key, (owner, arg) in _ENGINE_KEYS.items()},
    **{key: rule for key, (rule, _) in _CONFIG_KEYS.items()},
}


def config_keys() -> Dict[str, Tuple[Rule, str]]:
    """Every key of :func:`rpanoptic.add_rpanoptic_config`: key -> (its rule, the argument it
    becomes, e.g. ``"Recurrence(grad)"``; several, comma-separated, when several readers take
    it), the engine's keys first in its signatures' order."""
    engine = {k: (_RULES[k], f"{o.__name__}({a})") for k, (o, a) in _ENGINE_KEYS.items()}
    return {**engine, **_CONFIG_KEYS}


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _require_rpanoptic_keys(cfg) -> None:
    if "RECURRENT" not in cfg.MODEL:
        raise ValueError(
            "The config has no MODEL.RECURRENT: call rpanoptic.add_rpanoptic_config(cfg) before "
            "merging an rpanoptic config file."
        )


def check_key(cfg, key: str):
    """The value of ``key`` in ``cfg``; ValueError naming the key, the value and the allowed
    values when it breaks its rule."""
    value, rule = _get(cfg, key), _RULES[key]
    if not rule.ok(value):
        raise ValueError(f"Config {key} = {value!r} is invalid; allowed: {rule.allowed}.")
    return value


def check_rfpn_levels(cfg, produced: Optional[Sequence[str]] = None) -> List[str]:
    """MODEL.RFPN.LEVELS of an RFPN backbone, checked: a list of one or more levels, each one of
    ``produced`` (the FPN's outputs) when given. ValueError naming the key otherwise."""
    levels = list(check_key(cfg, "MODEL.RFPN.LEVELS"))
    if not levels:
        raise ValueError(
            "Config MODEL.RFPN.LEVELS = [] is invalid with MODEL.BACKBONE.NAME = "
            "'build_resnet_rfpn_backbone': it would build no recurrent layer; allowed: one or "
            "more FPN levels such as ['p2', 'p3'] (or use build_resnet_fpn_backbone)."
        )
    unknown = [level for level in levels if produced is not None and level not in produced]
    if unknown:
        raise ValueError(
            f"Config MODEL.RFPN.LEVELS = {levels} names {unknown}, which this FPN does not "
            f"produce; allowed: {list(produced)}."
        )
    return levels


def check_rfpn_widths(cfg, levels: Sequence[str], channels: int) -> Dict[str, int]:
    """{level: width} from MODEL.RFPN.WIDTHS (one per level of ``levels``, in order; [] gives
    every level ``channels``). ValueError naming the key otherwise."""
    widths = list(check_key(cfg, "MODEL.RFPN.WIDTHS"))
    if not widths:
        return {level: channels for level in levels}
    if len(widths) != len(levels):
        raise ValueError(
            f"Config MODEL.RFPN.WIDTHS = {widths} has {len(widths)} values for the "
            f"{len(levels)} levels of MODEL.RFPN.LEVELS = {list(levels)}; allowed: one width "
            "per level, in the same order, or [] (every level at MODEL.FPN.OUT_CHANNELS)."
        )
    return dict(zip(levels, widths))


def validate_recurrent_config(cfg) -> None:
    """Check every key of :func:`config_keys` at once, before anything is built (the components
    check the keys they read again, so a model built by Detectron2's own ``build_model`` names
    a bad key too). Raises ValueError naming the key, the value and the allowed values."""
    _require_rpanoptic_keys(cfg)
    for key in _RULES:
        check_key(cfg, key)
    if cfg.MODEL.BACKBONE.NAME == "build_resnet_rfpn_backbone":
        levels = check_rfpn_levels(cfg)
        check_rfpn_widths(cfg, levels, cfg.MODEL.FPN.OUT_CHANNELS)
        if check_key(cfg, "MODEL.RFPN.PLACEMENT") == "topdown" and "p6" in levels:
            raise ValueError(
                f"Config MODEL.RFPN.LEVELS = {levels} includes 'p6', which the top block makes "
                "outside the FPN's top-down path, so MODEL.RFPN.PLACEMENT = 'topdown' cannot "
                "hold it; allowed: levels of the top-down path (p2-p5), or PLACEMENT 'output'."
            )


def _arguments(cfg, owner) -> dict:
    """{argument: value} of ``owner``'s keys in ``cfg``, each checked by its rule."""
    return {arg: check_key(cfg, key) for key, (o, arg) in _ENGINE_KEYS.items() if o is owner}


def build_recurrence(cfg, channels: int, name: str = "recurrence") -> Recurrence:
    """A :class:`Recurrence` (named ``name``, its module path in the model) of an
    :class:`HGRUCell` with ``channels``, as MODEL.RECURRENT and MODEL.HGRU say: each key of
    ``_ENGINE_KEYS`` becomes its argument. Reads: MODEL.RECURRENT.{TIMESTEPS, GRAD,
    NEUMANN_STEPS, NEUMANN_RTOL, BACKWARD_SOLVER, LCP_TAU, LCP_REDUCTION, LCP_VECTOR,
    LCP_POWER_ITERS, LCP_GRADIENT, TEST_TIMESTEPS, HALT_TOL, TEST_SOLVER, ANDERSON_MEMORY, COMPILE,
    CHECK_FINITE}, MODEL.HGRU.{KERNEL_SIZE, NORM, NONLINEARITY, GN_GROUPS}.

    Each key is checked here, so the ValueError names the key, its value and the allowed values
    however the model is built (rpanoptic's ``build_model`` or Detectron2's)."""
    _require_rpanoptic_keys(cfg)
    recurrence_args, cell_args = _arguments(cfg, Recurrence), _arguments(cfg, HGRUCell)
    groups = cell_args["gn_groups"]
    if cell_args["norm"] == "GN" and channels % groups != 0:
        raise ValueError(
            f"Config MODEL.HGRU.GN_GROUPS = {groups} does not divide the recurrent layer's "
            f"{channels} channels; allowed: a divisor of {channels}."
        )
    cell = HGRUCell(channels, timesteps=recurrence_args["timesteps"], **cell_args)
    return Recurrence(cell, name=name, **recurrence_args)


def recurrent_layers(model: nn.Module) -> Dict[str, Recurrence]:
    """Every :class:`Recurrence` in ``model`` (unwrapping DDP), by module path."""
    model = getattr(model, "module", model)
    return {n: m for n, m in model.named_modules() if isinstance(m, Recurrence)}


PARAMETER_GROUPS = ("recurrent", "rfpn_scale", "backbone", "fpn", "heads")


def parameter_groups(model: nn.Module) -> Dict[str, Dict[str, nn.Parameter]]:
    """The trainable parameters of a (Detectron2) model in groups, by name (unwrapping DDP).

    Groups: ``recurrent`` (every :class:`Recurrence`'s cell), ``rfpn_scale`` (the RFPN levels'
    residual scales and width projections: what is left of ``backbone.rfpn``), ``backbone``
    (``backbone.bottom_up``), ``fpn`` (the rest of the backbone) and ``heads`` (everything
    else, e.g. the RPN, the ROI heads, the semantic head and a recurrent mask head's read-out).
    Empty groups are omitted.
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

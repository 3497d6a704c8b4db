"""Detectron2 components built on the recurrence engine. Importing this module registers
``build_resnet_rfpn_backbone`` (BACKBONE_REGISTRY) and ``RecurrentMaskRCNNConvUpsampleHead``
(ROI_MASK_HEAD_REGISTRY)."""

from .build import build_model, has_recurrence
from .mask_head import RecurrentMaskRCNNConvUpsampleHead
from .recurrent_config import (
    build_recurrence,
    parameter_groups,
    recurrent_layers,
    validate_recurrent_config,
)
from .rfpn import RFPN, RecurrentLevel, build_resnet_rfpn_backbone

__all__ = [
    "build_model",
    "has_recurrence",
    "build_recurrence",
    "recurrent_layers",
    "parameter_groups",
    "validate_recurrent_config",
    "RFPN",
    "RecurrentLevel",
    "build_resnet_rfpn_backbone",
    "RecurrentMaskRCNNConvUpsampleHead",
]

"""The recurrent FPN backbone: ResNet + FPN with an hGRU recurrence at chosen levels."""

import math
from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn

from .recurrent_config import build_recurrence, check_key, check_rfpn_levels, warn_unhooked_lcp

__all__ = [
    "RecurrentLevel",
    "RFPN",
    "build_resnet_rfpn_backbone",
    "fpn_levels",
    "level_recurrences",
]


class RecurrentLevel(nn.Module):
    """p -> p + scale * h_N, where h_N is the state of a recurrence driven by the FPN level p.

    ``scale`` is a per-channel parameter initialised to ``scale_init``. The default, zero, makes
    a freshly built level the identity: a model loaded from a feed-forward checkpoint starts as
    exactly that model, and training moves the recurrence in (the zero-initialised residual of
    ReZero/LayerScale). Trained from scratch, a zero scale keeps the recurrence out for long
    (measured on the synthetic dataset: |scale| about 0.01 after 500 iterations), so from-scratch
    configs start it at 1.
    """

    def __init__(self, recurrence: nn.Module, channels: int, scale_init: float = 0.0):
        super().__init__()
        self.recurrence = recurrence
        self.scale = nn.Parameter(torch.full((1, channels, 1, 1), float(scale_init)))

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        warn_unhooked_lcp(self.recurrence)
        return p + self.scale * self.recurrence(p)


class RFPN(FPN):
    """An :class:`FPN` whose levels in ``recurrences`` pass through a :class:`RecurrentLevel`.

    Parameter names of the plain FPN are kept (``bottom_up.*``, ``fpn_lateral*``,
    ``fpn_output*``); the recurrent ones live under ``rfpn.<level>.*``. When the top block
    (p6 in Panoptic FPN) is made from an FPN level, it is made from the recurrent one.
    """

    @configurable
    def __init__(
        self,
        bottom_up: nn.Module,
        in_features: List[str],
        out_channels: int,
        norm: str = "",
        top_block: Optional[nn.Module] = None,
        fuse_type: str = "sum",
        square_pad: int = 0,
        *,
        recurrences: Dict[str, nn.Module],
        scale_init: float = 0.0,
    ):
        """
        Args:
            bottom_up, in_features, out_channels, norm, top_block, fuse_type, square_pad: as
                :class:`detectron2.modeling.backbone.FPN`.
            recurrences: level name (e.g. "p3") -> a module ``forward(x) -> h`` of the same
                shape, typically a :class:`rpanoptic.recurrence.Recurrence`.
            scale_init: initial value of each level's residual scale (see
                :class:`RecurrentLevel`).
        """
        super().__init__(
            bottom_up, in_features, out_channels, norm, top_block, fuse_type, square_pad
        )
        not_modules = [lvl for lvl, rec in recurrences.items() if not isinstance(rec, nn.Module)]
        if not_modules:
            raise TypeError(
                f"RFPN: recurrences {not_modules} are not modules (got "
                f"{type(recurrences[not_modules[0]]).__name__}); in a LazyConfig pass "
                "recurrences=L(level_recurrences)(p3=..., ...) so that they are instantiated."
            )
        unknown = [lvl for lvl in recurrences if lvl not in self._out_features]
        if unknown:
            raise ValueError(
                f"RFPN: recurrences names the levels {unknown}, which this FPN does not produce; "
                f"allowed: {self._out_features}."
            )
        self.rfpn = nn.ModuleDict(
            {lvl: RecurrentLevel(rec, out_channels, scale_init) for lvl, rec in recurrences.items()}
        )
        self._sweep_cache: Optional[dict] = None

    def sweep_begin(self) -> None:
        """Sweep protocol (``rpanoptic.recurrence.sweep``): from now on an image run again is
        given its cached feed-forward features (only the recurrences see other step counts)."""
        self._sweep_cache = {}

    def sweep_end(self) -> None:
        """Sweep protocol: drop the cache."""
        self._sweep_cache = None

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        """The keys it reads are checked here (named in the error), however the model is built."""
        out_channels, in_features = cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.FPN.IN_FEATURES
        bottom_up, top_block = build_resnet_backbone(cfg, input_shape), LastLevelMaxPool()
        levels = check_rfpn_levels(cfg, fpn_levels(bottom_up, in_features, top_block))
        return {
            "bottom_up": bottom_up,
            "in_features": in_features,
            "out_channels": out_channels,
            "norm": cfg.MODEL.FPN.NORM,
            "top_block": top_block,
            "fuse_type": cfg.MODEL.FPN.FUSE_TYPE,
            "recurrences": {
                lvl: build_recurrence(cfg, out_channels, f"backbone.rfpn.{lvl}.recurrence")
                for lvl in levels
            },
            "scale_init": check_key(cfg, "MODEL.RFPN.SCALE_INIT"),
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Args: x (B, 3, H, W). Returns {level: (B, C, H / stride, W / stride)}."""
        out = dict(self._feedforward(x))
        top = self.top_block
        top_levels = []
        if top is not None and top.in_feature in self._out_features:
            top_levels = self._out_features[len(self._out_features) - top.num_levels :]
        for name in self._out_features:
            if top_levels and name == top_levels[0]:
                # Levels made by the top block (p6) come from the recurrent output of its input.
                out.update(zip(top_levels, top(out[top.in_feature])))
            if name in self.rfpn:
                out[name] = self.rfpn[name](out[name])
        return out

    def _feedforward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        # In a timestep sweep the same image is run once per step count: reuse its FPN outputs.
        cache = self._sweep_cache
        if cache is not None and "x" in cache and cache["x"].shape == x.shape:
            if torch.equal(cache["x"], x):
                return cache["features"]
        features = super().forward(x)
        if cache is not None:
            cache.update(x=x, features=features)
        return features


def fpn_levels(bottom_up: nn.Module, in_features: List[str], top_block=None) -> List[str]:
    """The levels an :class:`FPN` on ``bottom_up``'s ``in_features`` outputs: "p<log2 stride>"
    of each, then the top block's (as ``FPN.__init__`` names them)."""
    shapes = bottom_up.output_shape()
    stages = [int(math.log2(shapes[f].stride)) for f in in_features]
    extra = top_block.num_levels if top_block is not None else 0
    return [f"p{s}" for s in stages] + [f"p{stages[-1] + 1 + i}" for i in range(extra)]


def level_recurrences(**recurrences: nn.Module) -> Dict[str, nn.Module]:
    """{level: recurrence} from keyword arguments: how a LazyConfig passes RFPN's
    ``recurrences`` (``L(level_recurrences)(p3=..., p4=...)``; Detectron2's ``instantiate``
    builds the arguments of a call, not the values of a plain dict)."""
    return dict(recurrences)


@BACKBONE_REGISTRY.register()
def build_resnet_rfpn_backbone(cfg, input_shape: ShapeSpec) -> RFPN:
    """ResNet + FPN with an hGRU recurrence on each level of MODEL.RFPN.LEVELS.

    Reads the keys of ``build_resnet_fpn_backbone`` (MODEL.RESNETS.*, MODEL.FPN.*) and
    MODEL.RFPN.LEVELS, MODEL.RFPN.SCALE_INIT, MODEL.RECURRENT.*, MODEL.HGRU.*; a bad value of
    rpanoptic's keys raises ValueError naming the key, the value and the allowed values.
    """
    return RFPN(cfg, input_shape)

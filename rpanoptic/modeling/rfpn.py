"""The recurrent FPN backbone: ResNet + FPN with an hGRU recurrence at chosen levels.

Where the recurrence sits (``placement``):

- ``"output"``: on a level's output, after the FPN's top-down merge and output convolution. Only
  that level (and p6, pooled from p5) sees the recurrence.
- ``"topdown"``: inside the top-down path, on the merged feature (lateral + upsampled coarser
  level) before the output convolution. The recurrent feature is what the top-down path carries
  on, so every finer level receives it: a recurrence at p3 reaches p2 (where Detectron2's RoI
  pooler takes every box under 112 px) at p3's cost.

How wide it is (``widths``): a recurrence may run narrower than the FPN, between a 1 x 1
projection into its width and one back (MDEQ-style widths that grow with the stride keep the
cost of the fine levels down); the step's cost grows with the width squared.
"""

import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from fvcore.nn import weight_init
from torch import nn

from ..recurrence import deferred_finite_checks
from .recurrent_config import (
    RFPN_PLACEMENTS,
    build_recurrence,
    check_key,
    check_rfpn_levels,
    check_rfpn_widths,
    warn_unhooked_lcp,
)

__all__ = [
    "RecurrentLevel",
    "RFPN",
    "build_resnet_rfpn_backbone",
    "fpn_levels",
    "level_recurrences",
]


class RecurrentLevel(nn.Module):
    """p -> p + scale * out(h_N), where h_N is the state of a recurrence driven by in(p).

    ``in`` and ``out`` are 1 x 1 convolutions between the level's ``channels`` and the
    recurrence's ``width`` (identities when ``width`` is None or equal to ``channels``).
    ``scale`` is a per-channel parameter initialised to ``scale_init``. The default, zero, makes
    a freshly built level the identity: a model loaded from a feed-forward checkpoint starts as
    exactly that model, and training moves the recurrence in (the zero-initialised residual of
    ReZero/LayerScale). Trained from scratch, a zero scale keeps the recurrence out for long
    (measured on the synthetic dataset: |scale| about 0.01 after 500 iterations), so from-scratch
    configs start it at 1.
    """

    def __init__(
        self,
        recurrence: nn.Module,
        channels: int,
        scale_init: float = 0.0,
        width: Optional[int] = None,
    ):
        super().__init__()
        self.recurrence = recurrence
        self.scale = nn.Parameter(torch.full((1, channels, 1, 1), float(scale_init)))
        self.width = channels if width is None else int(width)
        if self.width != channels:
            self.project_in = Conv2d(channels, self.width, 1)
            self.project_out = Conv2d(self.width, channels, 1)
            weight_init.c2_xavier_fill(self.project_in)
            weight_init.c2_xavier_fill(self.project_out)
        else:
            self.project_in = self.project_out = None

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        warn_unhooked_lcp(self.recurrence)
        if self.project_in is None:
            return p + self.scale * self.recurrence(p)
        return p + self.scale * self.project_out(self.recurrence(self.project_in(p)))

    def extra_repr(self) -> str:
        return f"width={self.width}"


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
        placement: str = "output",
        widths: Optional[Dict[str, int]] = None,
    ):
        """
        Args:
            bottom_up, in_features, out_channels, norm, top_block, fuse_type, square_pad: as
                :class:`detectron2.modeling.backbone.FPN`.
            recurrences: level name (e.g. "p3") -> a module ``forward(x) -> h`` of the same
                shape, typically a :class:`rpanoptic.recurrence.Recurrence`.
            scale_init: initial value of each level's residual scale (see
                :class:`RecurrentLevel`).
            placement: "output" (on the level's output) or "topdown" (in the top-down path,
                so that finer levels receive the recurrent feature); see the module docstring.
            widths: level -> the width its recurrence runs at, between 1 x 1 projections (a
                level not named runs at ``out_channels``, unprojected). The recurrence must
                take and return that many channels.
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
        if placement not in RFPN_PLACEMENTS:
            raise ValueError(
                f"RFPN: placement {placement!r} is not supported; allowed: {RFPN_PLACEMENTS}."
            )
        # The levels of the top-down path, coarse to fine, as the FPN's lateral convs run.
        self._path_levels = fpn_levels(bottom_up, self.in_features)[::-1]
        outside = [lvl for lvl in recurrences if lvl not in self._path_levels]
        if placement == "topdown" and outside:
            raise ValueError(
                f"RFPN: levels {outside} are made by the top block, outside the top-down path, "
                f"so placement 'topdown' cannot hold them; allowed: {self._path_levels[::-1]} "
                "(or placement 'output')."
            )
        widths = dict(widths or {})
        stray = [lvl for lvl in widths if lvl not in recurrences]
        if stray:
            raise ValueError(f"RFPN: widths names {stray}, which have no recurrence.")
        self.placement = placement
        self.rfpn = nn.ModuleDict(
            {
                lvl: RecurrentLevel(rec, out_channels, scale_init, widths.get(lvl))
                for lvl, rec in recurrences.items()
            }
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
        widths = check_rfpn_widths(cfg, levels, out_channels)
        return {
            "bottom_up": bottom_up,
            "in_features": in_features,
            "out_channels": out_channels,
            "norm": cfg.MODEL.FPN.NORM,
            "top_block": top_block,
            "fuse_type": cfg.MODEL.FPN.FUSE_TYPE,
            "recurrences": {
                lvl: build_recurrence(cfg, widths[lvl], f"backbone.rfpn.{lvl}.recurrence")
                for lvl in levels
            },
            "scale_init": check_key(cfg, "MODEL.RFPN.SCALE_INIT"),
            "placement": check_key(cfg, "MODEL.RFPN.PLACEMENT"),
            "widths": widths,
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Args: x (B, 3, H, W). Returns {level: (B, C, H / stride, W / stride)}."""
        # One host synchronisation for the finite checks of every level, not one per level.
        with deferred_finite_checks(self.rfpn):
            if self.placement == "topdown":
                return self._forward_topdown(x)
            return self._forward_output(x)

    def _forward_output(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
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

    def _forward_topdown(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The FPN's forward (detectron2's, step for step) with each recurrent level applied to
        the merged top-down feature before its output convolution and before it is upsampled
        into the next finer level."""
        bottom_up = self._cached(x, self.bottom_up)
        results = []
        prev = None
        for idx, (lateral_conv, output_conv) in enumerate(
            zip(self.lateral_convs, self.output_convs)
        ):
            lateral = lateral_conv(bottom_up[self.in_features[-idx - 1]])
            if prev is None:
                prev = lateral
            else:
                prev = lateral + F.interpolate(prev, scale_factor=2.0, mode="nearest")
                if self._fuse_type == "avg":
                    prev = prev / 2
            level = self._path_levels[idx]
            if level in self.rfpn:
                prev = self.rfpn[level](prev)
            results.insert(0, output_conv(prev))
        if self.top_block is not None:
            if self.top_block.in_feature in bottom_up:
                top_in = bottom_up[self.top_block.in_feature]
            else:
                top_in = results[self._out_features.index(self.top_block.in_feature)]
            results.extend(self.top_block(top_in))
        return dict(zip(self._out_features, results))

    def _feedforward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self._cached(x, super().forward)

    def _cached(self, x: torch.Tensor, compute) -> Dict[str, torch.Tensor]:
        # In a timestep sweep the same image is run once per step count: reuse what is computed
        # before the first recurrence (the FPN's outputs, or the bottom-up features).
        cache = self._sweep_cache
        if cache is not None and "x" in cache and cache["x"].shape == x.shape:
            if torch.equal(cache["x"], x):
                return cache["features"]
        features = compute(x)
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

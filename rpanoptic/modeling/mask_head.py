"""The recurrent ROI mask head of the paper (R-FPN head): an hGRU in place of the 4 convs."""

from typing import Optional

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ConvTranspose2d, ShapeSpec, get_norm
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, BaseMaskRCNNHead
from torch import nn
from torch.nn import functional as F

from .recurrent_config import build_recurrence, warn_unhooked_lcp

__all__ = ["RecurrentMaskRCNNConvUpsampleHead"]


@ROI_MASK_HEAD_REGISTRY.register()
class RecurrentMaskRCNNConvUpsampleHead(BaseMaskRCNNHead):
    """Pooled RoI features drive an hGRU recurrence for N steps; its state is read out by an
    optional norm, a 2x ``ConvTranspose2d`` + ReLU and a 1x1 predictor, as in the paper.

    When the RoI features have another width than the recurrence (CONV_DIM), a 1x1 conv + ReLU
    projects them first. Reads MODEL.ROI_MASK_HEAD.{CONV_DIM, NORM, CLS_AGNOSTIC_MASK},
    MODEL.ROI_HEADS.NUM_CLASSES, MODEL.RECURRENT.*, MODEL.HGRU.*; a bad value of rpanoptic's
    keys raises ValueError naming the key, the value and the allowed values (in
    :func:`~.recurrent_config.build_recurrence`).
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        num_classes: int,
        conv_dim: int,
        recurrence: nn.Module,
        conv_norm: str = "",
        **kwargs,
    ):
        """
        Args:
            input_shape: shape of the pooled RoI features.
            num_classes: foreground classes (1 for class-agnostic masks).
            conv_dim: channels of the recurrence and the deconvolution.
            recurrence: a module ``forward(x) -> h`` on (R, conv_dim, S, S), typically a
                :class:`rpanoptic.recurrence.Recurrence` of an ``HGRUCell(conv_dim)``.
            conv_norm: normalisation of the state before the read-out ("" for none).
            kwargs: ``loss_weight`` and ``vis_period`` of :class:`BaseMaskRCNNHead`.
        """
        super().__init__(**kwargs)
        self.input_proj: Optional[Conv2d] = None
        if input_shape.channels != conv_dim:
            self.input_proj = Conv2d(input_shape.channels, conv_dim, 1, activation=F.relu)
            weight_init.c2_msra_fill(self.input_proj)
        self.recurrence = recurrence
        self.readout_norm = get_norm(conv_norm, conv_dim) or nn.Identity()
        self.deconv = ConvTranspose2d(conv_dim, conv_dim, kernel_size=2, stride=2, padding=0)
        self.predictor = Conv2d(conv_dim, num_classes, kernel_size=1)
        weight_init.c2_msra_fill(self.deconv)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.constant_(self.predictor.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        conv_dim = cfg.MODEL.ROI_MASK_HEAD.CONV_DIM
        ret.update(
            input_shape=input_shape,
            conv_dim=conv_dim,
            conv_norm=cfg.MODEL.ROI_MASK_HEAD.NORM,
            recurrence=build_recurrence(cfg, conv_dim, "roi_heads.mask_head.recurrence"),
            num_classes=(
                1 if cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES
            ),
        )
        return ret

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        """(R, C, S, S) RoI features -> (R, num_classes, 2S, 2S) mask logits."""
        warn_unhooked_lcp(self.recurrence)
        if self.input_proj is not None:
            x = self.input_proj(x)
        h = self.readout_norm(self.recurrence(x))
        return self.predictor(F.relu(self.deconv(h)))

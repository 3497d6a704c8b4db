"""LazyConfig of configs/COCO-PanopticSegmentation/panoptic_rfpn_R_50_crbp20_1x.yaml: Detectron2's
Panoptic FPN R-50 1x with hGRU recurrences at p3-p5 in the FPN's top-down path, at 32/64/128
channels between 1x1 projections (residual scales starting at 0), trained with C-RBP for 20
steps. Train it with tools/lazyconfig_train_net.py."""

from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from rpanoptic.modeling.rfpn import RFPN, level_recurrences

from .recurrent import hgru_recurrence, recurrent_train

_zoo = model_zoo.get_config("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.py")
dataloader, optimizer, lr_multiplier = _zoo.dataloader, _zoo.optimizer, _zoo.lr_multiplier
train = _zoo.train
train.update(recurrent_train)
model = _zoo.model

WIDTHS = {"p3": 32, "p4": 64, "p5": 128}
_fpn = model.backbone
model.backbone = L(RFPN)(
    bottom_up=_fpn.bottom_up,
    in_features=_fpn.in_features,
    out_channels=_fpn.out_channels,
    top_block=_fpn.top_block,
    recurrences=L(level_recurrences)(
        **{
            level: hgru_recurrence(width, f"backbone.rfpn.{level}.recurrence", gn_groups=8)
            for level, width in WIDTHS.items()
        }
    ),
    scale_init=0.0,
    placement="topdown",
    widths=WIDTHS,
)

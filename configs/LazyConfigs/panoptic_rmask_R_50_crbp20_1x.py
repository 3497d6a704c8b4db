"""LazyConfig of configs/COCO-PanopticSegmentation/panoptic_rmask_R_50_crbp20_1x.yaml: Detectron2's
Panoptic FPN R-50 1x with the paper's recurrent mask head (an hGRU in place of the 4 convs),
trained with C-RBP for 20 steps. Train it with tools/lazyconfig_train_net.py."""

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from rpanoptic.modeling.mask_head import RecurrentMaskRCNNConvUpsampleHead

from .recurrent import hgru_recurrence, recurrent_train

_zoo = model_zoo.get_config("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.py")
dataloader, optimizer, lr_multiplier = _zoo.dataloader, _zoo.optimizer, _zoo.lr_multiplier
train = _zoo.train
train.update(recurrent_train)
model = _zoo.model

model.roi_heads.mask_head = L(RecurrentMaskRCNNConvUpsampleHead)(
    input_shape=L(ShapeSpec)(channels=256, width=14, height=14),
    num_classes="${..num_classes}",
    conv_dim=256,
    recurrence=hgru_recurrence(256, "roi_heads.mask_head.recurrence"),
    conv_norm="",
)

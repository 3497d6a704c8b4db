"""Tiny Detectron2 set-ups shared by the integration tests (CPU, ResNet-18, 32 channels)."""

import glob
import os

import torch
from detectron2.structures import BitMasks, Boxes, Instances

from rpanoptic.engine.setup import get_rpanoptic_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)

COCO = "configs/COCO-PanopticSegmentation/"
FF = COCO + "panoptic_fpn_R_50_1x.yaml"
RFPN = COCO + "panoptic_rfpn_R_50_crbp20_1x.yaml"
RMASK = COCO + "panoptic_rmask_R_50_crbp20_1x.yaml"
TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.DEPTH", 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
    "MODEL.RESNETS.NORM", "GN",  # trained from scratch: FrozenBN would let activations explode
    "MODEL.FPN.NORM", "GN",
    "MODEL.FPN.OUT_CHANNELS", 32,
    "MODEL.ROI_MASK_HEAD.CONV_DIM", 32,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32,
    "MODEL.ROI_HEADS.NUM_CLASSES", 3,
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 4,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", 64,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", 64,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 64,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 200,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 200,
    "MODEL.RECURRENT.TIMESTEPS", 3,
    "MODEL.RECURRENT.NEUMANN_STEPS", 3,
    "MODEL.HGRU.GN_GROUPS", 8,
    # The tiny RFPN: a recurrence on every level's output at the FPN's 32 channels (the shipped
    # top-down, narrow layout has tests of its own, and the LazyConfig test trains it).
    "MODEL.RFPN.LEVELS", ["p2", "p3", "p4", "p5"],
    "MODEL.RFPN.WIDTHS", [],
    "MODEL.RFPN.PLACEMENT", "output",
    "INPUT.MIN_SIZE_TEST", 128,
    "INPUT.MAX_SIZE_TEST", 128,
]  # fmt: skip


def tiny_cfg(
    config_file="configs/COCO-PanopticSegmentation/panoptic_rfpn_R_50_crbp20_1x.yaml", *opts
):
    return get_rpanoptic_cfg(os.path.join(ROOT, config_file), TINY + list(opts))


def fake_batch(n=2, size=128, seed=0, num_classes=3, num_stuff=4):
    """DatasetMapper-style inputs: images, two boxes/masks each and a semantic map."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(n):
        image = torch.randint(0, 256, (3, size, size), generator=g).float()
        boxes = torch.tensor([[8.0, 10.0, 60.0, 70.0], [50.0, 40.0, 120.0, 100.0]])
        masks = torch.zeros(2, size, size, dtype=torch.bool)
        for k, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[k, y0:y1, x0:x1] = True
            image[:, y0:y1, x0:x1] = 200.0 * k
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.tensor([0, num_classes - 1])
        inst.gt_masks = BitMasks(masks)
        sem = torch.randint(1, num_stuff, (size, size), generator=g)
        sem[masks.any(0)] = 0
        batch.append(
            {"image": image, "instances": inst, "sem_seg": sem, "height": size, "width": size}
        )
    return batch

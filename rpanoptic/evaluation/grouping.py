"""Does a model tell one curve from the same-coloured curves that cross it?

Given the ground-truth box of an instance whose image holds other instances of the same
category (on the synthetic dataset: curves of one colour crossing each other), the mask head
should put high probability on that instance's pixels and low probability on the other
instances' pixels inside the same box. Telling them apart needs following the instance
through the crossings: the long-range grouping a recurrence is meant to add. PQ cannot show
progress here while every curve mask stays below the 0.5 threshold; these probabilities can.
"""

from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.layers import paste_masks_in_image
from detectron2.structures import Boxes, Instances

from ..data.validate import read_panoptic_png
from .report import _inputs

__all__ = ["mask_probability_stats", "instance_grouping"]


def mask_probability_stats(
    probs: np.ndarray, masks: Sequence[np.ndarray], boxes: Sequence[Sequence[int]]
) -> List[Dict[str, float]]:
    """Per instance k: the mean of ``probs[k]`` (its predicted mask probabilities, (H, W))
    over its own pixels (``own``), over the other instances' pixels inside its box (``other``,
    NaN when none) and over the rest of its box (``background``).

    Args:
        probs: (K, H, W) mask probabilities pasted into the image, one per instance.
        masks: K boolean (H, W) ground-truth masks.
        boxes: K boxes (x0, y0, x1, y1), integer pixel bounds, x1/y1 exclusive.
    """
    union = np.any(np.stack(masks), axis=0)
    rows = []
    for p, mask, (x0, y0, x1, y1) in zip(probs, masks, boxes):
        box = np.zeros_like(mask)
        box[y0:y1, x0:x1] = True
        others = union & ~mask & box
        rows.append(
            {
                "own": float(p[mask].mean()),
                "other": float(p[others].mean()) if others.any() else float("nan"),
                "background": float(p[box & ~union].mean()) if (box & ~union).any() else 0.0,
            }
        )
    return rows


@torch.no_grad()
def instance_grouping(
    model, cfg, dataset_name: str, category: str, max_images: int = 50
) -> Dict[str, float]:
    """Mask-head probabilities of ``category`` instances from their ground-truth boxes, on the
    images of a standard panoptic dataset (``pan_seg_file_name`` records) that hold at least two
    of them. Returns the means over instances of ``own``, ``other`` and ``background`` (see
    :func:`mask_probability_stats`), ``separation`` = own - other, and ``instances``."""
    meta = MetadataCatalog.get(dataset_name)
    contiguous = meta.thing_classes.index(category)
    was_training = model.training
    model.eval()
    rows = []
    try:
        for record in DatasetCatalog.get(dataset_name)[:max_images]:
            segments = [
                s
                for s in record["segments_info"]
                if s["isthing"] and s["category_id"] == contiguous
            ]
            if len(segments) < 2:
                continue
            ids = read_panoptic_png(record["pan_seg_file_name"])
            masks = [ids == s["id"] for s in segments]
            boxes = []
            for m in masks:
                ys, xs = np.nonzero(m)
                boxes.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
            inputs = _inputs(cfg, record)
            images = model.preprocess_image([inputs])
            scale = images.image_sizes[0][1] / ids.shape[1]  # the test-time resize
            features = model.backbone(images.tensor)
            instances = Instances(images.image_sizes[0])
            instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32) * scale)
            instances.pred_classes = torch.full((len(boxes),), contiguous, dtype=torch.long)
            instances = instances.to(images.tensor.device)
            out = model.roi_heads.forward_with_given_boxes(features, [instances])[0]
            box = Boxes(torch.tensor(boxes, dtype=torch.float32, device=images.tensor.device))
            pasted = paste_masks_in_image(out.pred_masks[:, 0], box, ids.shape, threshold=-1)
            probs = pasted.float().cpu().numpy() / 255.0  # a negative threshold gives 0-255
            rows += mask_probability_stats(probs, masks, boxes)
    finally:
        model.train(was_training)
    if not rows:
        return {"instances": 0}
    own = float(np.mean([r["own"] for r in rows]))
    other = float(np.nanmean([r["other"] for r in rows]))
    return {
        "instances": len(rows),
        "own": own,
        "other": other,
        "background": float(np.mean([r["background"] for r in rows])),
        "separation": own - other,
    }

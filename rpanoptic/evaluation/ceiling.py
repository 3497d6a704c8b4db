"""The PQ that Panoptic FPN's heads could reach at best: the ground truth passed through them.

A benchmark only measures what the heads can express. Panoptic FPN predicts stuff with a
semantic head at stride 4 (its logits upsampled bilinearly) and each thing with a 28 x 28 mask
in its box (pasted back bilinearly, thresholded at 0.5), then merges them
(:func:`detectron2.modeling.meta_arch.panoptic_fpn.combine_semantic_and_instance_outputs`).
:func:`head_ceiling` feeds a scene's ground truth through those same representations, with
perfect boxes, classes and scores, and scores the result against the ground truth with
panopticapi: a set whose ceiling is low cannot show what a better backbone would add, since
even a perfect one loses that much in the heads.
"""

import json
import os
import tempfile
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.layers.mask_ops import paste_masks_in_image
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.structures import BitMasks, Boxes, Instances
from PIL import Image

__all__ = ["through_heads", "head_ceiling"]

Scene = Tuple[np.ndarray, List[dict]]  # (segment-id map, segments with id and category_id)


def _semantic_logits(ids, segments, stuff_ids: Sequence[int], stride: int) -> torch.Tensor:
    """One-hot (things as class 0, stuff as 1..S; VOID left out) averaged over stride x stride
    blocks, then upsampled back as the semantic head's logits are (bilinear)."""
    h, w = ids.shape
    onehot = torch.zeros(1 + len(stuff_ids), h, w)
    category = {s["id"]: s["category_id"] for s in segments}
    for seg_id, cat in category.items():
        where = torch.from_numpy(ids == seg_id)
        onehot[1 + stuff_ids.index(cat) if cat in stuff_ids else 0][where] = 1.0
    small = F.avg_pool2d(onehot[None], stride, stride, ceil_mode=True)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]


def through_heads(
    ids: np.ndarray,
    segments: List[dict],
    stuff_ids: Sequence[int],
    stride: int = 4,
    mask_size: int = 28,
    overlap_threshold: float = 0.5,
    stuff_area_thresh: int = 0,
) -> Tuple[np.ndarray, List[dict]]:
    """The panoptic prediction of perfect heads of Panoptic FPN's resolutions for the ground
    truth (``ids``, ``segments``; 0 in ``ids`` is VOID). Returns (segment-id map, segments)."""
    stuff_ids = list(stuff_ids)
    h, w = ids.shape
    logits = _semantic_logits(ids, segments, stuff_ids, stride)
    things = [s for s in segments if s["category_id"] not in stuff_ids]
    instances = Instances((h, w))
    if things:
        masks = BitMasks(torch.from_numpy(np.stack([ids == s["id"] for s in things])))
        boxes = masks.get_bounding_boxes()
        boxes.tensor[:, 2:] += 1  # BitMasks' boxes end at the last pixel, boxes end after it
        small = masks.crop_and_resize(boxes.tensor, mask_size).float()
        pasted = paste_masks_in_image(small, boxes, (h, w), threshold=0.5)
        instances.pred_masks = pasted
        instances.pred_boxes = Boxes(boxes.tensor)
        instances.pred_classes = torch.tensor([s["category_id"] for s in things])
        instances.scores = torch.linspace(1.0, 0.9, len(things))
    else:
        instances.pred_masks = torch.zeros(0, h, w, dtype=torch.bool)
        instances.pred_boxes = Boxes(torch.zeros(0, 4))
        instances.pred_classes = torch.zeros(0, dtype=torch.long)
        instances.scores = torch.zeros(0)
    panoptic, info = combine_semantic_and_instance_outputs(
        instances, logits.argmax(0), overlap_threshold, stuff_area_thresh, 0.0
    )
    out_segments = []
    for seg in info:
        if seg["isthing"]:
            category = int(seg["category_id"])
        else:  # the semantic class index 1..S back to the stuff category id
            category = stuff_ids[int(seg["category_id"]) - 1]
        out_segments.append({"id": int(seg["id"]), "category_id": category})
    return panoptic.numpy().astype(np.uint32), out_segments


def _write(folder: str, name: str, ids: np.ndarray) -> None:
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(os.path.join(folder, name))


def head_ceiling(
    scenes: Sequence[Scene], categories: List[dict], **heads
) -> Dict[str, Dict[str, float]]:
    """PQ, SQ and RQ (0-100) of :func:`through_heads` against the ground truth over
    ``scenes``: {"All", "Things", "Stuff", and each category name: {"pq", "sq", "rq", "n"}}."""
    from panopticapi.evaluation import pq_compute

    stuff_ids = [c["id"] for c in categories if not c["isthing"]]
    with tempfile.TemporaryDirectory() as tmp:
        folders = {k: os.path.join(tmp, k) for k in ("gt", "pred")}
        for folder in folders.values():
            os.makedirs(folder)
        gt_json = {"images": [], "annotations": [], "categories": categories}
        pred_json = {"annotations": []}
        for index, (ids, segments) in enumerate(scenes):
            name = f"{index:06d}.png"
            pred_ids, pred_segments = through_heads(ids, segments, stuff_ids, **heads)
            truth = [
                dict(s, iscrowd=s.get("iscrowd", 0), area=int((ids == s["id"]).sum()))
                for s in segments
            ]
            for kind, arr, segs in (("gt", ids, truth), ("pred", pred_ids, pred_segments)):
                _write(folders[kind], name, arr)
                entry = {"image_id": index, "file_name": name, "segments_info": segs}
                (gt_json if kind == "gt" else pred_json)["annotations"].append(entry)
            gt_json["images"].append({"id": index, "file_name": name})
        for kind, data in (("gt", gt_json), ("pred", pred_json)):
            with open(os.path.join(tmp, f"{kind}.json"), "w") as f:
                json.dump(data, f)
        result = pq_compute(
            os.path.join(tmp, "gt.json"),
            os.path.join(tmp, "pred.json"),
            gt_folder=folders["gt"],
            pred_folder=folders["pred"],
        )
    names = {c["id"]: c["name"] for c in categories}
    out = {
        k: {m: 100 * v for m, v in result[k].items() if m != "n"}
        for k in ("All", "Things", "Stuff")
    }
    for cat_id, values in result["per_class"].items():
        out[names[int(cat_id)]] = {m: 100 * v for m, v in values.items()}
    return out

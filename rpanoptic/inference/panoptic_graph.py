"""The panoptic network as a function of one resized image tensor (3, H, W), in the model's
input format, to its five raw output tensors (boxes, scores, classes, mask probabilities,
semantic logits; see :mod:`.export`):

- :class:`RawPanoptic` through the eager model's own inference (what the TorchScript trace
  records);
- :class:`ExportPanoptic` through the same modules with Detectron2's data-dependent glue
  (padding through a size tensor, branches on the data, ``len()`` of data-sized tensors)
  written on tensors, so that ``torch.export`` keeps the image size and the numbers of
  proposals and detections symbolic.
"""

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator.rpn import RPN
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from torch import nn
from torchvision.ops import nms

__all__ = ["ExportPanoptic", "OUTPUT_NAMES", "Raw", "RawPanoptic"]

Raw = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
OUTPUT_NAMES = ("boxes", "scores", "classes", "mask_probs", "sem_seg")


class RawPanoptic(nn.Module):
    """A Panoptic FPN model as a function of one resized image tensor (3, H, W), in the model's
    input format, to its five raw output tensors (see the module docstring), through the eager
    model's own inference: what :func:`export_traced` traces."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> Raw:
        instances, sem_seg = self.model.inference([{"image": image}], do_postprocess=False)
        found = instances[0]
        masks = found.pred_masks if found.has("pred_masks") else torch.zeros(0, 1, 28, 28)
        return found.pred_boxes.tensor, found.scores, found.pred_classes, masks, sem_seg[0]


def _clip(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``Boxes.clip`` on an (N, 4) tensor, without its finiteness assertion (the boxes passed
    here have been filtered to finite ones)."""
    x1 = boxes[:, 0].clamp(min=0, max=width)
    y1 = boxes[:, 1].clamp(min=0, max=height)
    x2 = boxes[:, 2].clamp(min=0, max=width)
    y2 = boxes[:, 3].clamp(min=0, max=height)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def _batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float
) -> torch.Tensor:
    """NMS within each group: ``torchvision.ops.batched_nms``'s offset trick, in float32 as
    Detectron2 calls it, without its branch on the number of boxes (the maximum over no boxes
    is taken as 0; the boxes are clipped, so it is the boxes' maximum otherwise)."""
    boxes = boxes.float()
    top = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = groups.to(boxes) * (top + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, threshold)


def _pool(pooler: ROIPooler, features: List[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
    """``ROIPooler.forward`` for the boxes (N, 4) of one image."""
    rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], dim=1)
    if len(pooler.level_poolers) == 1:
        return pooler.level_poolers[0](features[0], rois)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    level = torch.floor(
        pooler.canonical_level + torch.log2(torch.sqrt(area) / pooler.canonical_box_size + 1e-8)
    )
    level = torch.clamp(level, min=pooler.min_level, max=pooler.max_level)
    level = level.to(torch.int64) - pooler.min_level
    size = pooler.output_size
    out = features[0].new_zeros(boxes.shape[0], features[0].shape[1], size[0], size[1])
    for index, level_pooler in enumerate(pooler.level_poolers):
        rows = torch.nonzero(level == index)[:, 0]
        out.index_put_((rows,), level_pooler(features[index], rois[rows]))
    return out


class ExportPanoptic(nn.Module):
    """A Panoptic FPN model (PanopticFPN with an RPN and StandardROIHeads) as a function of one
    resized image tensor (3, H, W) to its five raw output tensors, written so that
    ``torch.export`` can capture all of it: the eager model's modules, with Detectron2's
    inference glue (padding, proposal selection, box inference, mask selection) on tensors
    whose sizes may depend on the data (see the module docstring). Same results as
    :class:`RawPanoptic`; raises ValueError for a model it does not cover."""

    def __init__(self, model: nn.Module):
        super().__init__()
        heads = getattr(model, "roi_heads", None)
        problems = []
        if not hasattr(model, "sem_seg_head"):
            problems.append(f"meta architecture {type(model).__name__} (PanopticFPN is)")
        if not isinstance(getattr(model, "proposal_generator", None), RPN):
            problems.append("a proposal generator other than RPN")
        if not isinstance(heads, StandardROIHeads):
            problems.append(f"ROI heads {type(heads).__name__} (StandardROIHeads are)")
        else:
            if heads.keypoint_on:
                problems.append("keypoints")
            if not isinstance(heads.box_predictor, FastRCNNOutputLayers):
                problems.append(f"box predictor {type(heads.box_predictor).__name__}")
            if heads.mask_on and heads.mask_pooler is None:
                problems.append("a mask head without a pooler")
        if problems:
            raise ValueError(
                "torch.export covers Panoptic FPN with an RPN and StandardROIHeads (box and "
                f"mask heads); this model has {', '.join(problems)}. Use the TorchScript export."
            )
        self.model = model

    def forward(self, image: torch.Tensor) -> Raw:
        model = self.model
        height, width = image.shape[-2:]
        images = self._batch(image)
        features = model.backbone(images)
        sem_seg, _ = model.sem_seg_head(features, None)
        proposals = self._proposals(features, height, width)
        boxes, scores, classes = self._detect(features, proposals, height, width)
        return boxes, scores, classes, self._masks(features, boxes, classes), sem_seg[0]

    def _batch(self, image: torch.Tensor) -> torch.Tensor:
        """``preprocess_image``: normalised and padded as ``ImageList.from_tensors`` pads,
        the padded size computed from the image's (symbolic) size."""
        model = self.model
        height, width = image.shape[-2:]
        size = [height, width]
        constraints = model.backbone.padding_constraints or {}
        if constraints.get("square_size", 0) > 0:
            size = [constraints["square_size"]] * 2
        divisibility = constraints.get("size_divisibility", model.backbone.size_divisibility)
        if divisibility > 1:
            size = [(s + divisibility - 1) // divisibility * divisibility for s in size]
        x = (image - model.pixel_mean) / model.pixel_std
        return F.pad(x, [0, size[1] - width, 0, size[0] - height]).unsqueeze(0)

    def _proposals(self, features: Dict[str, torch.Tensor], height: int, width: int):
        """``RPN.forward`` and ``find_top_rpn_proposals`` at test time, for one image."""
        rpn = self.model.proposal_generator
        maps = [features[f] for f in rpn.in_features]
        anchors = rpn.anchor_generator(maps)
        logits, deltas = rpn.rpn_head(maps)
        logits = [score.permute(0, 2, 3, 1).flatten(1) for score in logits]
        box_dim = rpn.anchor_generator.box_dim
        deltas = [
            d.view(d.shape[0], -1, box_dim, d.shape[-2], d.shape[-1])
            .permute(0, 3, 4, 1, 2)
            .flatten(1, -2)
            for d in deltas
        ]
        decoded = rpn._decode_proposals(anchors, deltas)
        top_boxes, top_scores, levels = [], [], []
        for level, (boxes_i, logits_i) in enumerate(zip(decoded, logits)):
            count = min(logits_i.shape[1], rpn.pre_nms_topk[False])
            scores_i, index = logits_i[0].topk(count)
            top_boxes.append(boxes_i[0, index])
            top_scores.append(scores_i)
            levels.append(torch.full((count,), level, dtype=torch.int64, device=scores_i.device))
        boxes, scores, level = torch.cat(top_boxes), torch.cat(top_scores), torch.cat(levels)
        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        boxes, scores, level = boxes[valid], scores[valid], level[valid]
        boxes = _clip(boxes, height, width)
        sides = boxes[:, 2:] - boxes[:, :2]
        keep = (sides > rpn.min_box_size).all(dim=1)
        boxes, scores, level = boxes[keep], scores[keep], level[keep]
        keep = _batched_nms(boxes, scores, level, rpn.nms_thresh)[: rpn.post_nms_topk[False]]
        return boxes[keep]

    def _detect(self, features, proposals: torch.Tensor, height: int, width: int):
        """``StandardROIHeads._forward_box`` and ``fast_rcnn_inference_single_image``."""
        heads = self.model.roi_heads
        predictor = heads.box_predictor
        pooled = _pool(heads.box_pooler, [features[f] for f in heads.box_in_features], proposals)
        logits, deltas = predictor(heads.box_head(pooled))
        boxes = predictor.box2box_transform.apply_deltas(deltas, proposals)
        scores = logits.sigmoid() if predictor.use_sigmoid_ce else F.softmax(logits, dim=-1)
        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
        boxes, scores = boxes[valid], scores[valid][:, :-1]
        per_class = boxes.shape[1] // 4
        boxes = _clip(boxes.reshape(-1, 4), height, width).view(-1, per_class, 4)
        above = scores > predictor.test_score_thresh
        where = above.nonzero()
        boxes = boxes[where[:, 0], 0] if per_class == 1 else boxes[above]
        scores = scores[above]
        keep = _batched_nms(boxes, scores, where[:, 1], predictor.test_nms_thresh)
        if predictor.test_topk_per_image >= 0:
            keep = keep[: predictor.test_topk_per_image]
        return boxes[keep], scores[keep], where[keep, 1]

    def _masks(self, features, boxes: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """``StandardROIHeads._forward_mask`` and ``mask_rcnn_inference`` (probabilities of the
        predicted class). The mask head runs on the detections and one zero RoI after them,
        dropped from its output: with at least one RoI known at export, a head that branches on
        an empty batch (a recurrence does) exports, and no RoI changes another's result."""
        heads = self.model.roi_heads
        if not heads.mask_on:
            return boxes.new_zeros(0, 1, 28, 28)
        maps = [features[f] for f in heads.mask_in_features]
        pooled = _pool(heads.mask_pooler, maps, boxes)
        pooled = torch.cat([pooled, pooled.new_zeros(1, *pooled.shape[1:])])
        logits = heads.mask_head.layers(pooled)[:-1]
        if logits.shape[1] == 1:
            return logits.sigmoid()
        rows = torch.arange(logits.shape[0], device=logits.device)
        return logits[rows, classes][:, None].sigmoid()

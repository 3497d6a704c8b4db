"""Does a model tell one curve from the same-coloured curves that cross it?

Given the ground-truth box of an instance whose image holds other instances of the same
category (on the synthetic dataset: curves of one colour crossing each other), the mask head
should put high probability on that instance's pixels and low probability on the other
instances' pixels inside the same box. Telling them apart needs following the instance
through the crossings: the long-range grouping a recurrence is meant to add. PQ cannot show
progress here while every curve mask stays below the 0.5 threshold; these probabilities can.

From the command line (``tools/analyze.py mask-probe``; ``--help`` lists the options):

  python tools/analyze.py mask-probe --config-file configs/Synthetic/panoptic_fpn_R_18.yaml \\
      --weights output/compare/ff/seed0/model_final.pth --output output/mask_probe
"""

import argparse
import json
import os
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.layers import paste_masks_in_image
from detectron2.structures import Boxes, Instances
from PIL import Image

from ..data import SceneSpec, ensure_synthetic_dataset, standard_dataset
from ..data.validate import read_panoptic_png
from ..engine.checkpoint import load_weights
from ..engine.setup import get_rpanoptic_cfg
from ..evaluation.report import _inputs
from ..modeling import build_model
from ..utils import eval_mode, provenance, pyplot

__all__ = ["draw_instance_masks", "mask_probability_stats", "instance_grouping"]


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


def _box_probabilities(model, cfg, record: dict, contiguous: int):
    """The mask head's probabilities from the ground-truth boxes of the instances of category
    ``contiguous`` in ``record`` (None when it has fewer than two): (ids, masks, boxes, probs),
    probs (K, H, W) pasted into the image at its stored size."""
    segments = [
        s for s in record["segments_info"] if s["isthing"] and s["category_id"] == contiguous
    ]
    if len(segments) < 2:
        return None
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
    return ids, masks, boxes, probs


@torch.no_grad()
def instance_grouping(
    model, cfg, dataset_name: str, category: str, max_images: int = 50
) -> Dict[str, float]:
    """Mask-head probabilities of ``category`` instances from their ground-truth boxes, on the
    images of a standard panoptic dataset (``pan_seg_file_name`` records) that hold at least two
    of them. Returns the means over instances of ``own``, ``other`` and ``background`` (see
    :func:`mask_probability_stats`), ``separation`` = own - other, and ``instances``."""
    contiguous = MetadataCatalog.get(dataset_name).thing_classes.index(category)
    rows = []
    with eval_mode(model):
        for record in DatasetCatalog.get(dataset_name)[:max_images]:
            found = _box_probabilities(model, cfg, record, contiguous)
            if found is not None:
                rows += mask_probability_stats(found[3], found[1], found[2])
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


@torch.no_grad()
def draw_instance_masks(
    model, cfg, dataset_name: str, category: str, path: str, num: int = 6
) -> int:
    """Draw, for the first ``num`` instances of ``category`` found as in
    :func:`instance_grouping`, the image in the instance's box, its ground truth (own pixels
    white, the other same-category instances' red) and the mask head's probability from that
    box. Writes ``path`` (PNG); returns the number of instances drawn."""
    contiguous = MetadataCatalog.get(dataset_name).thing_classes.index(category)
    panels = []
    with eval_mode(model):
        for record in DatasetCatalog.get(dataset_name):
            found = _box_probabilities(model, cfg, record, contiguous)
            if found is None:
                continue
            ids, masks, boxes, probs = found
            image = np.asarray(Image.open(record["file_name"]).convert("RGB"))
            union = np.any(np.stack(masks), axis=0)
            for mask, (x0, y0, x1, y1), prob in zip(masks, boxes, probs):
                truth = np.zeros(mask.shape + (3,))
                truth[union & ~mask] = (1.0, 0.2, 0.2)
                truth[mask] = 1.0
                crop = (slice(y0, y1), slice(x0, x1))
                panels.append((image[crop], truth[crop], prob[crop]))
            if len(panels) >= num:
                break
    panels = panels[:num]
    if not panels:
        return 0
    plt = pyplot()
    fig, axes = plt.subplots(len(panels), 3, figsize=(7.5, 2.5 * len(panels)), squeeze=False)
    titles = ("image in the box", "truth (white: own, red: others)", "mask-head probability")
    for row, panel in zip(axes, panels):
        for ax, data, title in zip(row, panel, titles):
            shown = ax.imshow(data, vmin=0, vmax=1, cmap="viridis") if data.ndim == 2 else None
            if shown is None:
                ax.imshow(data)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.suptitle(f"{category}: mask head from the ground-truth box ({dataset_name})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return len(panels)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True, help="the trained model's checkpoint")
    p.add_argument("--category", default="curve", help="a thing class of the dataset")
    p.add_argument("--splits", default="val,train", help="standard datasets' splits to probe")
    p.add_argument("--num", type=int, default=6, help="instances drawn per split")
    p.add_argument("--output", default="output/mask_probe", help="folder for PNGs and JSON")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", args.weights, *args.opts]
    cfg = get_rpanoptic_cfg(args.config_file, opts)
    if any(d.startswith("synthetic_panoptic") for d in cfg.DATASETS.TEST):
        ensure_synthetic_dataset({"train": 400, "val": 50}, size=SceneSpec.size)
    model = build_model(cfg)
    load_weights(model, cfg)
    os.makedirs(args.output, exist_ok=True)
    test = standard_dataset(cfg.DATASETS.TEST[0])
    stats = {}
    for split in args.splits.split(","):
        dataset = test.replace("_val", f"_{split}") if split != "val" else test
        stats[split] = instance_grouping(model, cfg, dataset, args.category)
        picture = os.path.join(args.output, f"{args.category}_{split}.png")
        drawn = draw_instance_masks(model, cfg, dataset, args.category, picture, args.num)
        print(f"{dataset}: {json.dumps(stats[split])}; {drawn} instances drawn in {picture}")
    with open(os.path.join(args.output, f"{args.category}_grouping.json"), "w") as f:
        record = {"weights": args.weights, "config": args.config_file, **stats}
        json.dump({**record, "provenance": provenance(cfg.MODEL.DEVICE)}, f, indent=2)
    return 0

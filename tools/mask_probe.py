#!/usr/bin/env python
"""What the mask head predicts for one category from the ground-truth boxes: the grouping
statistics of :func:`rpanoptic.evaluation.grouping.instance_grouping` and a picture of the
first instances (image in the box, truth, predicted probability). On the synthetic dataset it
shows whether curve masks fail because the crossing curves are confused or because the curve
is not segmented at all.

  python tools/mask_probe.py --config-file configs/Synthetic/panoptic_fpn_R_18.yaml \\
      --weights output/compare/ff/seed0/model_final.pth --output output/mask_probe
"""
import argparse
import json
import os
import sys

import rpanoptic  # noqa: F401  (registers rpanoptic's components and the synthetic datasets)
from rpanoptic.data import SceneSpec, ensure_synthetic_dataset, standard_dataset
from rpanoptic.engine.checkpoint import load_weights
from rpanoptic.engine.setup import get_rpanoptic_cfg
from rpanoptic.evaluation.grouping import draw_instance_masks, instance_grouping
from rpanoptic.modeling import build_model


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
        json.dump({"weights": args.weights, "config": args.config_file, **stats}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""How much a trained RFPN's recurrences change the features: per level, |scale h_t| / |p| and
its change between step counts, whole and spatial part (channel means removed), averaged over
images. Prints a table and writes a CSV.

  python tools/recurrent_contribution.py \\
      --config-file configs/Synthetic/panoptic_rfpn_R_18_crbp.yaml \\
      --input datasets/synthetic_panoptic/val --images 8 \\
      --csv results/diagnosis/contribution_rfpn_crbp10_seed0.csv \\
      MODEL.WEIGHTS output/compare/rfpn_crbp10/seed0/model_final.pth
"""
import argparse
import csv
import os
import sys

from detectron2.data import detection_utils as utils

import rpanoptic  # noqa: F401  (registers rpanoptic's components and the synthetic datasets)
from rpanoptic.engine.setup import get_rpanoptic_cfg
from rpanoptic.evaluation.contribution import rfpn_contribution
from rpanoptic.evaluation.report import image_inputs
from rpanoptic.inference import expand_inputs, load_weights
from rpanoptic.modeling import build_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--input", nargs="+", required=True, help="images, folders or globs")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--counts", default="1,10,30", help="step counts to compare")
    p.add_argument("--csv", default="")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="MODEL.WEIGHTS CKPT and KEY VALUE")
    args = p.parse_args(argv)
    cfg = get_rpanoptic_cfg(args.config_file, list(args.opts) + ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    load_weights(model, cfg.MODEL.WEIGHTS)
    paths = expand_inputs(args.input)[: args.images]
    batches = [
        model.preprocess_image(
            [image_inputs(cfg, utils.read_image(f, format=cfg.INPUT.FORMAT))]
        ).tensor
        for f in paths
    ]
    counts = [int(c) for c in args.counts.split(",")]
    rows = rfpn_contribution(model, batches, counts)
    print(f"{len(paths)} images; norm of scale * term over norm of the feed-forward level p")
    print("| level | term | whole | spatial part |")
    print("|---|---|---|---|")
    for whole in [r for r in rows if r["part"] == "whole"]:
        spatial = next(
            r
            for r in rows
            if r["part"] == "spatial"
            and r[("level")] == whole["level"]
            and r["quantity"] == whole["quantity"]
        )
        print(
            f"| {whole['level']} | {whole['quantity']} | {whole['value']:.3f} | "
            f"{spatial['value']:.3f} |"
        )
    if args.csv:
        os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["level", "quantity", "part", "value"])
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

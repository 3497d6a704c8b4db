#!/usr/bin/env python
"""One training batch through a model in several learning modes: per parameter group (recurrent
cells, RFPN scales, backbone, FPN, heads) and per recurrent layer the gradient norm, the weight
norm and their ratio, and each mode's recurrent gradient against a reference mode's (relative
error, cosine). Prints a table and writes it as CSV.

  python tools/gradient_check.py --config-file configs/Synthetic/panoptic_rfpn_R_18_crbp.yaml
  python tools/gradient_check.py --config-file C --modes crbp,rbp,bptt --reference bptt \
      MODEL.WEIGHTS output/demo/model_final.pth
"""
import argparse
import csv
import os
import sys

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_train_loader
from detectron2.utils.events import EventStorage

import rpanoptic  # noqa: F401  (registers rpanoptic's components and the synthetic datasets)
from rpanoptic.data import SceneSpec, ensure_synthetic_dataset
from rpanoptic.engine.setup import get_rpanoptic_cfg
from rpanoptic.evaluation.gradients import gradient_table, gradients_by_mode
from rpanoptic.modeling import build_model


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--modes", default="crbp,bptt", help="learning modes to compare")
    p.add_argument("--reference", default="bptt", help="the mode the others are compared to")
    p.add_argument("--seed", type=int, default=0, help="weights, batch and sampling seed")
    p.add_argument("--output", default="output/gradient_check.csv")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = get_rpanoptic_cfg(args.config_file, ["MODEL.DEVICE", "cpu", *args.opts])
    if any(d.startswith("synthetic_panoptic") for d in cfg.DATASETS.TRAIN):
        ensure_synthetic_dataset({"train": 400, "val": 50}, size=SceneSpec.size)
    cfg.DATALOADER.NUM_WORKERS = 0
    torch.manual_seed(args.seed)
    model = build_model(cfg).train()
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    batch = next(iter(build_detection_train_loader(cfg)))
    with EventStorage(0):  # Detectron2's losses log to an event storage
        grads = gradients_by_mode(
            model, batch, args.modes.split(","), cfg.MODEL.RECURRENT.LCP_WEIGHT, args.seed
        )
    rows = gradient_table(model, grads, args.reference)
    print(
        f"{'mode':6s} {'set':45s} {'grad':>10s} {'weight':>10s} {'ratio':>9s} {'rel.err':>8s} cos"
    )
    for r in rows:
        err = f"{r['rel_error']:8.4f} {r['cosine']:.4f}" if "rel_error" in r else ""
        print(
            f"{r['mode']:6s} {r['set']:45s} {r['grad_norm']:10.3e} {r['weight_norm']:10.3e} "
            f"{r['ratio']:9.2e} {err}"
        )
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w", newline="") as f:
        fields = ["mode", "set", "grad_norm", "weight_norm", "ratio", "rel_error", "cosine"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    print("Written:", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

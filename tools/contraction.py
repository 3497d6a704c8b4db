#!/usr/bin/env python
"""Contraction during training: train a config for a few iterations as C-RBP (its LCP weight)
and as RBP (no penalty), from the same random weights and synthetic images, and plot each
recurrent layer's spectral-radius estimate, Neumann fallbacks and penalty against iterations.
Writes results/contraction/<config>.csv and .png.

  python tools/contraction.py \
      --config-file configs/COCO-PanopticSegmentation/panoptic_rfpn_R_50_crbp20_1x.yaml
  python tools/contraction.py --config-file C --iters 60 --period 5 --size 256 KEY VALUE ...
"""
import argparse
import os
import sys

from detectron2.utils.logger import setup_logger

import rpanoptic  # noqa: F401  (registers rpanoptic's components and the synthetic datasets)
from rpanoptic.data import SceneSpec, ensure_synthetic_dataset
from rpanoptic.data.synthetic import FOLDER, datasets_root
from rpanoptic.engine.setup import get_rpanoptic_cfg
from rpanoptic.experiments.contraction import train_modes, write_contraction

# COCO-shaped configs on synthetic images without pretrained weights: GroupNorm in the ResNet
# (FrozenBN with random weights lets activations explode), the RFPN's residual scale at 1 as for
# training from scratch (at 0 no task gradient would reach the cells), one small batch, the COCO
# LR scaled linearly to it (16 -> 2 images: 0.02 -> 0.0025).
RANDOM_WEIGHTS = [
    "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.NORM", "GN",
    "MODEL.FPN.NORM", "GN",
    "MODEL.RFPN.SCALE_INIT", "1.0",
    "MODEL.ROI_HEADS.NUM_CLASSES", "3",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5",
    "DATASETS.TRAIN", "('synthetic_panoptic_train_separated',)",
    "INPUT.MASK_FORMAT", "bitmask",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.BASE_LR", "0.0025",
    "SOLVER.WARMUP_ITERS", "10",
    "DATALOADER.NUM_WORKERS", "1",
]  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--modes", default="crbp,rbp", help="learning modes to train")
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--period", type=int, default=5, help="iterations between diagnostics")
    p.add_argument("--size", type=int, default=256, help="image size (px) of the synthetic set")
    p.add_argument("--train", type=int, default=400, help="synthetic training images")
    p.add_argument("--val", type=int, default=50, help="synthetic validation images")
    p.add_argument("--output-dir", default="output/contraction")
    p.add_argument("--results-dir", default="results/contraction")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="detectron2")
    setup_logger(name="rpanoptic")
    # Another size goes to its own folder, so the demo's dataset (SceneSpec.size) is kept.
    root = ""
    if args.size != SceneSpec.size:
        root = os.path.join(datasets_root(), f"{FOLDER}_{args.size}px")
    ensure_synthetic_dataset({"train": args.train, "val": args.val}, size=args.size, root=root)
    name = os.path.splitext(os.path.basename(args.config_file))[0]
    sizes = ["INPUT.MIN_SIZE_TRAIN", f"({args.size},)", "INPUT.MAX_SIZE_TRAIN", str(args.size)]
    opts = RANDOM_WEIGHTS + sizes + list(args.opts)
    rows = train_modes(
        args.config_file,
        os.path.join(args.output_dir, name),
        args.modes.split(","),
        args.iters,
        args.period,
        opts,
    )
    cfg = get_rpanoptic_cfg(args.config_file, opts)
    rec = cfg.MODEL.RECURRENT
    title = (
        f"{name}: random weights, synthetic {args.size} px, batch {cfg.SOLVER.IMS_PER_BATCH}, "
        f"N={rec.TIMESTEPS}, K={rec.NEUMANN_STEPS}, LCP weight {rec.LCP_WEIGHT} "
        f"({rec.LCP_REDUCTION}), tau {rec.LCP_TAU}"
    )
    base = os.path.join(args.results_dir, name)
    files = write_contraction(rows, base + ".csv", base + ".png", title, rec.LCP_TAU)
    for mode in args.modes.split(","):
        radius = [r for r in rows if r["mode"] == mode and r["metric"] == "spectral_radius"]
        last = max((r["iteration"] for r in radius), default=-1)
        final = {r["layer"]: r["value"] for r in radius if r["iteration"] == last}
        peak = max((r["value"] for r in radius), default=float("nan"))
        print(f"{mode}: spectral radius at iteration {last}: {final}; max over training {peak:.3f}")
    print("Written:", ", ".join(files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

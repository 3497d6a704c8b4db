"""Does the penalty keep a recurrence contractive while it trains? Train one config for a few
iterations in several learning modes (e.g. "crbp" at its configured LCP weight against "rbp",
which has no penalty), logging each recurrent layer's spectral-radius estimate, Neumann
fallbacks and penalty every few iterations; write them as a CSV and a picture.

Used on the COCO-shaped configs with random weights on the synthetic images (no COCO, no
pretrained weights needed) by ``tools/analyze.py contraction``; the demo and ``make compare`` log
the same scalars for the synthetic models.

From the command line (``tools/analyze.py contraction``; ``--help`` lists the options):

  python tools/analyze.py contraction \
      --config-file configs/COCO-PanopticSegmentation/panoptic_rfpn_R_50_crbp20_1x.yaml
  python tools/analyze.py contraction --config-file C --iters 60 --period 5 --size 256 KEY VALUE ...
"""

import argparse
import csv
import logging
import os
from typing import Dict, List, Sequence

from detectron2.utils.logger import setup_logger

from ..data import SceneSpec, ensure_synthetic_dataset
from ..data.synthetic import FOLDER, datasets_root
from ..engine.demo import demo_config
from ..engine.setup import get_rpanoptic_cfg
from ..engine.trainer import Trainer
from ..utils import pyplot

__all__ = ["train_modes", "write_contraction"]

logger = logging.getLogger(__name__)

PANELS = [
    ("spectral_radius", "spectral radius of dF/dh at h_N"),
    ("neumann_fallbacks", "Neumann series stopped by the safeguard"),
    ("lcp", "LCP (unweighted, sum)"),
]


def train_modes(
    config_file: str,
    output_dir: str,
    modes: Sequence[str],
    iters: int,
    period: int,
    opts: Sequence[str] = (),
) -> List[Dict]:
    """Train ``config_file`` + ``opts`` for ``iters`` iterations once per learning mode (the
    same seed and data), without evaluation. Returns rows (mode, iteration, layer, metric,
    value) of every recurrent diagnostic logged every ``period`` iterations."""
    rows = []
    for mode in modes:
        folder = os.path.join(output_dir, mode)
        extra = ["MODEL.RECURRENT.GRAD", mode, "MODEL.RECURRENT.DIAGNOSTICS_PERIOD", str(period)]
        cfg = demo_config(config_file, folder, iters, "", [*opts, *extra, "DATASETS.TEST", "()"])
        os.makedirs(folder, exist_ok=True)
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        # From the event storage, not metrics.json: its writer keeps only the latest value of
        # a scalar per write period.
        for key, history in trainer.storage.histories().items():
            if not key.startswith("recurrent/"):
                continue
            _, layer, metric = key.split("/")
            for value, iteration in history.values():
                rows.append(dict(mode=mode, iteration=iteration, layer=layer, metric=metric,
                                 value=value))  # fmt: skip
    return rows


def write_contraction(rows: List[Dict], csv_path: str, png_path: str, title: str, tau: float):
    """Write the rows as CSV and draw one column per mode: spectral radius, fallbacks, LCP."""
    os.makedirs(os.path.dirname(csv_path) or ".", exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["mode", "iteration", "layer", "metric", "value"])
        writer.writeheader()
        writer.writerows(rows)
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    layers = sorted({r["layer"] for r in rows})
    plt = pyplot()
    fig, axes = plt.subplots(
        len(PANELS), len(modes), figsize=(5 * len(modes), 3 * len(PANELS)), squeeze=False
    )
    for col, mode in enumerate(modes):
        for row, (metric, name) in enumerate(PANELS):
            ax = axes[row][col]
            for layer in layers:
                pts = [
                    (r["iteration"], r["value"])
                    for r in rows
                    if r["mode"] == mode and r["layer"] == layer and r["metric"] == metric
                ]
                if pts:
                    ax.plot(*zip(*pts), "-o", ms=3, label=layer.replace(".recurrence", ""))
            if metric == "spectral_radius":
                ax.axhline(1.0, color="k", ls="--", lw=1)
                ax.axhline(tau, color="gray", ls=":", lw=1)
            ax.set(title=f"{mode}: {name}", xlabel="iteration")
            if ax.lines and row == 0:
                ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    return {"csv": csv_path, "png": png_path}


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

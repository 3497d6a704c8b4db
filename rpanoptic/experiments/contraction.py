"""Does the penalty keep a recurrence contractive while it trains? Train one config for a few
iterations in several learning modes (e.g. "crbp" at its configured LCP weight against "rbp",
which has no penalty), logging each recurrent layer's spectral-radius estimate, Neumann
fallbacks and penalty every few iterations; write them as a CSV and a picture.

Used on the COCO-shaped configs with random weights on the synthetic images (no COCO, no
pretrained weights needed) by ``tools/contraction.py``; the demo and ``make compare`` log the
same scalars for the synthetic models.
"""

import csv
import logging
import os
from typing import Dict, List, Sequence

from ..engine.trainer import Trainer
from ..utils import pyplot
from .demo import demo_config

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

"""`make compare`: train several configs with the same schedule over several seeds, then put
them side by side (PQ as mean and spread over seeds; parameters, training memory, step and
inference time) with a plot of PQ against the number of inference steps.

Each (config, seed) run happens in a fresh process (:func:`run_one`, through
``tools/compare.py --one``) so that its peak memory is its own, and writes ``result.json`` in its
folder; a run whose ``result.json`` exists is not repeated, so an interrupted comparison resumes.
"""

import csv
import json
import logging
import os
import resource
import statistics
import time
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.data import build_detection_test_loader

from .demo import demo_config, has_recurrence, train_and_evaluate

__all__ = ["COUNTS", "describe", "run_one", "summarize", "write_comparison"]

logger = logging.getLogger(__name__)

COUNTS = [1, 2, 3, 5, 10, 20, 30]  # inference steps swept for every recurrent model
METRICS = ["PQ", "PQ_th", "PQ_st", "SQ", "RQ"]
COSTS = ["params_M", "train_peak_mb", "step_s", "infer_img_s"]


def describe(cfg) -> str:
    """A short name of what a config trains, e.g. "RFPN p3-p5, crbp N=10"."""
    rec = cfg.MODEL.RECURRENT
    steps = f"{rec.GRAD} N={rec.TIMESTEPS}"
    if cfg.MODEL.BACKBONE.NAME == "build_resnet_rfpn_backbone":
        levels = cfg.MODEL.RFPN.LEVELS
        return f"RFPN {levels[0]}-{levels[-1]}, {steps}"
    if cfg.MODEL.ROI_MASK_HEAD.NAME == "RecurrentMaskRCNNConvUpsampleHead":
        return f"recurrent mask head, {steps}"
    return "Panoptic FPN (feed-forward)"


def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _step_seconds(metrics_json: str, fallback: float) -> float:
    """Median training-step time logged in a metrics.json (Detectron2 logs it from the 4th
    iteration on); ``fallback`` for runs too short to have it."""
    with open(metrics_json) as f:
        times = [json.loads(line).get("time") for line in f if line.strip()]
    times = [t for t in times if t is not None]
    return statistics.median(times) if times else fallback


@torch.no_grad()
def _inference_seconds(cfg, model, images: int = 20) -> float:
    """Median seconds per image (batch 1, eval mode, at TEST_TIMESTEPS) on the test set."""
    model.eval()
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    sync = torch.cuda.synchronize if cfg.MODEL.DEVICE.startswith("cuda") else (lambda: None)
    times = []
    for i, inputs in enumerate(loader):
        if i > images:
            break
        sync()
        start = time.perf_counter()
        model(inputs)
        sync()
        if i > 0:  # the first image warms up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_one(
    config_file: str,
    seed: int,
    output_dir: str,
    iters: int = 0,
    device: str = "",
    opts: Sequence[str] = (),
) -> Dict:
    """Train and measure one config with one seed; writes and returns ``result.json``'s dict."""
    cfg = demo_config(config_file, output_dir, iters, device, [*opts, "SEED", str(seed)])
    if cfg.MODEL.DEVICE.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    run = train_and_evaluate(cfg, COUNTS)
    model = run["model"]
    result = {
        "config": os.path.relpath(config_file),
        "model": describe(cfg),
        "seed": seed,
        "iters": cfg.SOLVER.MAX_ITER,
        "device": cfg.MODEL.DEVICE,
        **{m: run["results"]["panoptic_seg"][m] for m in METRICS},
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "train_peak_mb": _peak_memory_mb(cfg.MODEL.DEVICE),
        "step_s": _step_seconds(
            os.path.join(output_dir, "metrics.json"), run["train_s"] / cfg.SOLVER.MAX_ITER
        ),
        "infer_img_s": _inference_seconds(cfg, model),
        "train_s": run["train_s"],
        "sweep": {
            str(t): {m: r["panoptic_seg"][m] for m in ("PQ", "PQ_th", "PQ_st")}
            for t, r in run["sweep"].items()
        },
        "trained_timesteps": cfg.MODEL.RECURRENT.TIMESTEPS if has_recurrence(cfg) else 0,
    }
    tmp = os.path.join(output_dir, "result.json.tmp")
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, os.path.join(output_dir, "result.json"))
    return result


def summarize(results: List[Dict]) -> List[Dict]:
    """One row per model, in first-seen order: each metric's mean and standard deviation over
    seeds (``PQ``, ``PQ_sd``, ...; sd is 0 for one seed) and the costs' means."""
    by_model: Dict[str, List[Dict]] = {}
    for r in results:
        by_model.setdefault(r["model"], []).append(r)
    rows = []
    for model, runs in by_model.items():
        row = {"model": model, "seeds": len(runs), "iters": runs[0]["iters"]}
        for m in METRICS:
            values = np.array([r[m] for r in runs], dtype=float)
            row[m], row[m + "_sd"] = values.mean(), values.std(ddof=1) if len(runs) > 1 else 0.0
        for c in COSTS:
            row[c] = float(np.mean([r[c] for r in runs]))
        rows.append(row)
    return rows


def _plot(results: List[Dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for row in summarize(results):
        runs = [r for r in results if r["model"] == row["model"]]
        for ax, metric in zip(axes, ("PQ", "PQ_th")):
            if not runs[0]["sweep"]:
                ax.axhline(row[metric], color="gray", ls="--", label=row["model"])
                continue
            counts = sorted(int(t) for t in runs[0]["sweep"])
            values = np.array([[r["sweep"][str(t)][metric] for t in counts] for r in runs])
            line = ax.plot(counts, values.mean(0), "-o", ms=3, label=row["model"])[0]
            ax.fill_between(
                counts, values.min(0), values.max(0), alpha=0.15, color=line.get_color()
            )
            ax.axvline(runs[0]["trained_timesteps"], color=line.get_color(), ls=":", lw=1)
    for ax, metric in zip(axes, ("PQ", "PQ_th")):
        ax.set(
            xlabel="inference steps t (dotted: trained N)",
            ylabel=metric,
            xscale="log",
            title=f"{metric}: mean over seeds, band min-max",
        )
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_comparison(results: List[Dict], out_dir: str) -> Dict[str, str]:
    """Write comparison.csv (per model), runs.csv (per run), comparison.md and pq_vs_steps.png.

    Returns {what: path}.
    """
    rows = summarize(results)
    files = {k: os.path.join(out_dir, k) for k in ("comparison.csv", "runs.csv")}
    for path, table in ((files["comparison.csv"], rows), (files["runs.csv"], results)):
        fields = [k for k in table[0] if k != "sweep"]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(table)
    header = "model | seeds | PQ | PQ_th | PQ_st | params (M) | train peak (MB) | step (s)"
    lines = [f"| {header} | inference (s/img) |", "|---" * 9 + "|"]
    for r in rows:
        pq = " | ".join(f"{r[m]:.1f} ± {r[m + '_sd']:.1f}" for m in ("PQ", "PQ_th", "PQ_st"))
        costs = f"{r['params_M']:.2f} | {r['train_peak_mb']:.0f} | {r['step_s']:.2f}"
        lines.append(f"| {r['model']} | {r['seeds']} | {pq} | {costs} | {r['infer_img_s']:.3f} |")
    lines += ["", "PQ at inference steps t (mean over seeds):", ""]
    recurrent = [r for r in rows if any(x["sweep"] for x in results if x["model"] == r["model"])]
    lines += [
        "| model | " + " | ".join(f"t={t}" for t in COUNTS) + " |",
        "|---" * (len(COUNTS) + 1) + "|",
    ]
    for r in recurrent:
        runs = [x for x in results if x["model"] == r["model"]]
        means = [np.mean([x["sweep"][str(t)]["PQ"] for x in runs]) for t in COUNTS]
        lines.append(f"| {r['model']} | " + " | ".join(f"{v:.1f}" for v in means) + " |")
    files["comparison.md"] = os.path.join(out_dir, "comparison.md")
    with open(files["comparison.md"], "w") as f:
        f.write("\n".join(lines) + "\n")
    files["pq_vs_steps.png"] = os.path.join(out_dir, "pq_vs_steps.png")
    _plot(results, files["pq_vs_steps.png"])
    return files

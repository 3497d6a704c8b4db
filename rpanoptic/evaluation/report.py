"""Pictures and a short report of a trained model: training curves, panoptic predictions next to
the ground truth, and one image's prediction as the recurrent steps unfold."""

import json
import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.utils.visualizer import ColorMode, Visualizer

from ..data.validate import read_panoptic_png
from ..recurrence import sweep
from ..utils import eval_mode, pyplot
from .enclosure import CLOSURE_SCORES

__all__ = [
    "plot_training_curves",
    "plot_recurrent_diagnostics",
    "read_metrics",
    "predict",
    "draw_predictions",
    "draw_unfolding",
    "draw_unfolding_image",
    "draw_panoptic",
    "image_inputs",
    "write_report",
]

logger = logging.getLogger(__name__)


def read_metrics(metrics_json: str) -> List[dict]:
    """The records of a Detectron2 ``metrics.json`` (one JSON object per line)."""
    with open(metrics_json) as f:
        return [json.loads(line) for line in f if line.strip()]


def _series(records: List[dict], key: str):
    pts = [(r["iteration"], r[key]) for r in records if key in r]
    return tuple(zip(*pts)) if pts else ((), ())


# (metric logged under recurrent/<layer>/, axis title, log scale)
_RECURRENT_PANELS = [
    ("spectral_radius", "spectral radius of dF/dh at h_N", False),
    ("neumann_fallbacks", "Neumann series stopped by the safeguard", False),
    ("lcp", "LCP of the layer (unweighted)", True),
]


def plot_recurrent_diagnostics(
    metrics_json: str, out_png: str, tau: Optional[float] = None
) -> List[str]:
    """Plot, against the iteration, each recurrent layer's spectral-radius estimate, Neumann
    fallbacks and penalty, and each parameter group's update ratio (||update|| / ||weights||
    of one step), from the scalars LCPHook and ParameterStatsHook logged to ``metrics.json``.

    Returns the recurrent layers found (none: nothing is drawn).
    """
    records = read_metrics(metrics_json)
    keys = {k for r in records for k in r}
    layers = sorted({k.split("/")[1] for k in keys if k.startswith("recurrent/")})
    groups = sorted({k.split("/")[1] for k in keys if k.startswith("params/")})
    if not layers and not groups:
        return []
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for ax, (metric, title, log) in zip(axes, _RECURRENT_PANELS):
        for layer in layers:
            it, v = _series(records, f"recurrent/{layer}/{metric}")
            if it:
                ax.plot(it, v, "-o", ms=3, label=layer)
        if metric == "spectral_radius":
            ax.axhline(1.0, color="k", lw=1, ls="--", label="1 (contraction limit)")
            if tau is not None:
                ax.axhline(tau, color="gray", lw=1, ls=":", label=f"tau = {tau}")
        if log and any(ln.get_ydata().size and min(ln.get_ydata()) > 0 for ln in ax.lines):
            ax.set_yscale("log")
        ax.set(xlabel="iteration", title=title)
    ax = axes[3]
    for group in groups:
        it, v = _series(records, f"params/{group}/update_ratio")
        if it:
            ax.plot(it, v, "-o", ms=3, label=group)
    ax.set(xlabel="iteration", title="||update|| / ||weights|| per step", yscale="log")
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return layers


def plot_training_curves(metrics_json: str, out_png: str) -> List[str]:
    """Plot every ``loss_*`` and ``total_loss`` of a Detectron2 ``metrics.json`` against the
    iteration (log scale); returns the plotted keys."""
    records = [r for r in read_metrics(metrics_json) if "total_loss" in r]
    keys = sorted({k for r in records for k in r if k.startswith("loss_")}) + ["total_loss"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in keys:
        pts = [(r["iteration"], r[key]) for r in records if key in r and r[key] > 0]
        if pts:
            ax.plot(*zip(*pts), label=key, lw=2 if key in ("total_loss", "loss_lcp") else 1)
    ax.set(xlabel="iteration", ylabel="loss", yscale="log", title="training losses")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return keys


def _inputs(cfg, record: dict) -> dict:
    return image_inputs(cfg, utils.read_image(record["file_name"], format=cfg.INPUT.FORMAT))


def image_inputs(cfg, image: np.ndarray) -> dict:
    """The model input of one image (H, W, 3) in cfg.INPUT.FORMAT: resized as at test time."""
    height, width = image.shape[:2]
    aug = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    resized = aug.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
    return {"image": tensor, "height": height, "width": width}


@torch.no_grad()
def predict(model, cfg, record: dict) -> dict:
    """Run ``model`` (eval mode) on the image of a dataset record; returns its output dict."""
    with eval_mode(model):
        return model([_inputs(cfg, record)])[0]


def _rgb(record: dict) -> np.ndarray:
    return utils.read_image(record["file_name"], format="RGB")


def _draw(image, metadata, output=None, record=None) -> np.ndarray:
    vis = Visualizer(image, metadata, instance_mode=ColorMode.IMAGE)
    if output is not None:
        panoptic, segments = output["panoptic_seg"]
        return vis.draw_panoptic_seg(panoptic.cpu(), segments).get_image()
    ids = read_panoptic_png(record["pan_seg_file_name"])
    segments = [dict(s) for s in record["segments_info"]]
    return vis.draw_panoptic_seg(torch.from_numpy(ids.astype(np.int64)), segments).get_image()


def _prediction_metadata(dataset: str):
    # Panoptic FPN predicts stuff with the "_separated" class list (index 0 = all things).
    separated = dataset + "_separated"
    return MetadataCatalog.get(separated if separated in DatasetCatalog.list() else dataset)


def draw_predictions(model, cfg, dataset: str, out_dir: str, num: int = 4) -> List[str]:
    """Save ground truth | prediction pictures of the first ``num`` images of ``dataset``
    (a standard panoptic dataset, with ``pan_seg_file_name``; predictions are drawn with the
    metadata of ``dataset + "_separated"`` when it exists); returns the PNG paths."""
    metadata, pred_metadata = MetadataCatalog.get(dataset), _prediction_metadata(dataset)
    plt = pyplot()
    paths = []
    for record in DatasetCatalog.get(dataset)[:num]:
        image = _rgb(record)
        gt = _draw(image, metadata, record=record)
        pred = _draw(image, pred_metadata, output=predict(model, cfg, record))
        fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
        for ax, picture, title in zip(axes, (gt, pred), ("ground truth", "prediction")):
            ax.imshow(picture)
            ax.set_title(title)
            ax.axis("off")
        fig.tight_layout()
        name = os.path.splitext(os.path.basename(record["file_name"]))[0]
        paths.append(os.path.join(out_dir, f"prediction_{name}.png"))
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


@torch.no_grad()
def draw_unfolding(model, cfg, record: dict, counts: Sequence[int], out_png: str, dataset: str):
    """One dataset image's panoptic prediction at each step count in ``counts`` (one recurrent
    run to the largest count), in a row, with the trained N marked."""
    image = utils.read_image(record["file_name"], format=cfg.INPUT.FORMAT)
    draw_unfolding_image(model, cfg, image, counts, out_png, _prediction_metadata(dataset))


@torch.no_grad()
def draw_unfolding_image(model, cfg, image: np.ndarray, counts: Sequence[int], out_png, metadata):
    """As :func:`draw_unfolding`, for an image (H, W, 3) in cfg.INPUT.FORMAT drawn with
    ``metadata``."""
    rgb = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
    inputs = [image_inputs(cfg, image)]
    pictures = {}
    with eval_mode(model):
        with sweep(model, counts) as set_count:
            for t in counts:
                set_count(t)
                pictures[t] = _draw(rgb, metadata, output=model(inputs)[0])
    plt = pyplot()
    fig, axes = plt.subplots(1, len(counts), figsize=(2.6 * len(counts), 2.9), squeeze=False)
    trained = cfg.MODEL.RECURRENT.TIMESTEPS
    for ax, t in zip(axes[0], counts):
        ax.imshow(pictures[t])
        ax.set_title(f"t = {t}" + (" (trained N)" if t == trained else ""), fontsize=9)
        ax.axis("off")
    fig.suptitle("prediction as the recurrent steps unfold", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def draw_panoptic(image_rgb: np.ndarray, metadata, output: dict) -> np.ndarray:
    """Detectron2's Visualizer overlay of a model output's ``panoptic_seg`` on an RGB image."""
    return _draw(image_rgb, metadata, output=output)


def write_report(
    out_dir: str,
    results: Dict,
    files: Dict[str, str],
    notes: Sequence[str] = (),
    sweep: Optional[Dict[int, dict]] = None,
    trained: int = 0,
) -> str:
    """Write ``report.md``: ``notes`` (paragraphs), the PQ table of
    ``results['panoptic_seg']`` (all, things, stuff, each category), the closure scores of the
    enclosure scenes when ``results`` has them, the same at each inference step count of
    ``sweep`` ({t: results}, the trained N marked) and where to look (``files``: {what: path})."""
    pq = results.get("panoptic_seg", {})
    lines = ["# rpanoptic demo report", ""]
    for paragraph in notes:
        lines += [paragraph, ""]
    lines += ["| | PQ | SQ | RQ |", "|---|---|---|---|"]
    for row, suffix in (("all", ""), ("things", "_th"), ("stuff", "_st")):
        values = [pq.get(m + suffix, float("nan")) for m in ("PQ", "SQ", "RQ")]
        lines.append(f"| {row} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    categories = [k[3:] for k in pq if k.startswith("PQ/")]
    for name in categories:
        values = [pq.get(f"{m}/{name}", float("nan")) for m in ("PQ", "SQ", "RQ")]
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    closure = results.get("enclosure", {})
    if closure:
        lines += [
            "",
            "Closure (of the tokens and the ground inside loops, the share labelled right, "
            "balanced over closed and open loops: 50 = every loop treated alike, 100 = closed "
            f"told from open): tokens {closure['token_closure']:.1f} (closed loops "
            f"{closure['tokens_closed_loop/right']:.1f}, open loops "
            f"{closure['tokens_open_loop/right']:.1f}), ground {closure['interior_closure']:.1f}.",
        ]
    if sweep:
        counts = sorted(sweep)
        lines += ["", "Against the number of inference steps t (trained with N steps):", ""]
        lines.append(
            "| t | " + " | ".join(f"{t}" + (" (N)" if t == trained else "") for t in counts) + " |"
        )
        lines.append("|---" * (len(counts) + 1) + "|")
        rows = [("panoptic_seg", m) for m in ["PQ", "PQ_th", "PQ_st"]]
        rows += [("panoptic_seg", f"PQ/{name}") for name in categories]
        rows += [("enclosure", m) for m in CLOSURE_SCORES if closure]
        for task, metric in rows:
            values = [(sweep[t] or {}).get(task, {}).get(metric, float("nan")) for t in counts]
            lines.append(f"| {metric} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    lines += ["", "Where to look:", ""]
    for what, path in files.items():
        lines.append(f"- {what}: `{os.path.relpath(path, out_dir)}`")
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path

"""The end-to-end demo: train a small recurrent Panoptic FPN on the synthetic dataset, evaluate
PQ, sweep the inference steps, and write pictures and a report."""

import json
import logging
import os
import time
from typing import Dict, Sequence

import torch
from detectron2.data import DatasetCatalog
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from ..data.panoptic import standard_dataset
from ..evaluation import timestep_sweep
from ..evaluation.report import (
    draw_predictions,
    draw_unfolding,
    plot_recurrent_diagnostics,
    plot_training_curves,
    write_report,
)
from ..modeling.build import has_recurrence
from ..utils import provenance
from .setup import get_rpanoptic_cfg
from .trainer import Trainer

__all__ = [
    "demo_config",
    "run_demo",
    "sweep_counts",
    "train_and_evaluate",
]

logger = logging.getLogger(__name__)


def demo_config(config_file: str, output_dir: str, iters: int = 0, device: str = "", opts=()):
    """The demo's config: ``config_file`` + ``opts``, writing to ``output_dir``. ``iters`` > 0
    sets SOLVER.MAX_ITER and moves the LR steps and checkpoints to the same fractions of it;
    ``device`` defaults to cuda when available, else cpu."""
    cfg = get_rpanoptic_cfg(config_file, opts)
    if iters > 0:
        scale = iters / cfg.SOLVER.MAX_ITER
        steps = (int(round(s * scale)) for s in cfg.SOLVER.STEPS)
        cfg.SOLVER.STEPS = tuple(sorted({s for s in steps if 0 < s < iters}))
        cfg.SOLVER.WARMUP_ITERS = int(round(cfg.SOLVER.WARMUP_ITERS * min(scale, 1.0)))
        cfg.SOLVER.CHECKPOINT_PERIOD = max(1, int(round(cfg.SOLVER.CHECKPOINT_PERIOD * scale)))
        cfg.SOLVER.MAX_ITER = iters
    cfg.MODEL.DEVICE = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg.OUTPUT_DIR = output_dir
    return cfg


def sweep_counts(trained: int) -> list:
    """Inference step counts to show: from 1 to three times the trained N."""
    return sorted({1, 2, max(1, trained // 2), trained, 2 * trained, 3 * trained})


def train_and_evaluate(cfg, counts: Sequence[int] = (), resume: bool = False) -> Dict:
    """Train ``cfg`` (seeded by cfg.SEED when >= 0), evaluate the final model on
    DATASETS.TEST[0] and, for a recurrent model, sweep the inference steps ``counts`` (default
    :func:`sweep_counts`), writing to cfg.OUTPUT_DIR.

    Training starts from scratch (or cfg.MODEL.WEIGHTS); with ``resume`` it continues from the
    last checkpoint in cfg.OUTPUT_DIR when there is one (the caller checks that it belongs to
    the same config).

    Returns:
        dict with ``model`` (unwrapped), ``results`` (the evaluators' results), ``sweep``
        ({t: results}; empty for a feed-forward model), ``counts``, ``train_s`` (seconds
        spent in training and its final evaluation, in this process) and ``start_iter`` (0, or
        the iteration training resumed at).
    """
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED)
    start = time.perf_counter()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    start_iter = trainer.start_iter
    trainer.train()
    train_s = time.perf_counter() - start
    model = getattr(trainer.model, "module", trainer.model)
    # DefaultTrainer's EvalHook evaluated the final model already; reuse its results.
    results = getattr(trainer, "_last_eval_results", None) or Trainer.test(cfg, model)
    counts = list(counts) or sweep_counts(cfg.MODEL.RECURRENT.TIMESTEPS)
    sweep = {}
    if has_recurrence(cfg):
        folder = os.path.join(cfg.OUTPUT_DIR, "timestep_sweep")
        sweep = timestep_sweep(cfg, model, counts, cfg.DATASETS.TEST[0], folder)
    return dict(
        model=model,
        results=results,
        sweep=sweep,
        counts=counts,
        train_s=train_s,
        start_iter=start_iter,
    )


def run_demo(cfg, counts: Sequence[int] = (), num_pictures: int = 4) -> Dict[str, str]:
    """Train ``cfg`` (OUTPUT_DIR is the demo folder), evaluate, sweep, draw, report.

    Returns {what: path} of the files written.
    """
    out = cfg.OUTPUT_DIR
    start = time.perf_counter()
    run = train_and_evaluate(cfg, counts)
    model, results, sweep = run["model"], run["results"], run["sweep"]
    if not comm.is_main_process():
        return {}
    files = {"metrics": os.path.join(out, "metrics_final.json")}
    with open(files["metrics"], "w") as f:
        record = {"final": results, "timestep_sweep": sweep}
        json.dump({**record, "provenance": provenance(cfg.MODEL.DEVICE)}, f, indent=2)
    files["training curves"] = os.path.join(out, "training_curves.png")
    plot_training_curves(os.path.join(out, "metrics.json"), files["training curves"])
    diagnostics = os.path.join(out, "recurrent_diagnostics.png")
    tau = cfg.MODEL.RECURRENT.LCP_TAU
    if plot_recurrent_diagnostics(os.path.join(out, "metrics.json"), diagnostics, tau):
        files["contraction during training"] = diagnostics

    dataset = cfg.DATASETS.TEST[0]
    standard = standard_dataset(dataset)
    if sweep:
        folder = os.path.join(out, "timestep_sweep")
        files["PQ against inference steps"] = os.path.join(folder, "timestep_sweep.png")
        files["PQ per step count (CSV)"] = os.path.join(folder, "timestep_sweep.csv")
        record = DatasetCatalog.get(standard)[0]
        files["steps unfolding"] = os.path.join(out, "unfolding.png")
        draw_unfolding(model, cfg, record, run["counts"], files["steps unfolding"], standard)
    pictures = draw_predictions(model, cfg, standard, out, num=num_pictures)
    for i, path in enumerate(pictures):
        files[f"prediction {i + 1}"] = path
    recurrence = f", {cfg.MODEL.RECURRENT.GRAD} with N = {cfg.MODEL.RECURRENT.TIMESTEPS}"
    notes = [
        f"Model: backbone `{cfg.MODEL.BACKBONE.NAME}`, mask head `{cfg.MODEL.ROI_MASK_HEAD.NAME}`"
        f"{recurrence if sweep else ''}; {cfg.SOLVER.MAX_ITER} iterations of batch "
        f"{cfg.SOLVER.IMS_PER_BATCH} on {cfg.MODEL.DEVICE}, trained and evaluated in "
        f"{run['train_s'] / 60:.1f} min; evaluated on `{dataset}`; everything took "
        f"{(time.perf_counter() - start) / 60:.1f} min.",
    ]
    trained = cfg.MODEL.RECURRENT.TIMESTEPS
    files["report"] = write_report(out, results, files, notes, sweep, trained)
    return files

"""The end-to-end demo: train a small recurrent Panoptic FPN on the synthetic dataset, evaluate
PQ, sweep the inference steps, and write pictures and a report."""

import json
import logging
import os
from typing import Dict, Sequence

from detectron2.utils import comm

from ..evaluation import timestep_sweep
from ..evaluation.report import draw_predictions, draw_unfolding, plot_training_curves, write_report
from .trainer import Trainer

__all__ = ["run_demo", "sweep_counts"]

logger = logging.getLogger(__name__)


def sweep_counts(trained: int) -> list:
    """Inference step counts to show: from 1 to three times the trained N."""
    return sorted({1, 2, max(1, trained // 2), trained, 2 * trained, 3 * trained})


def run_demo(cfg, counts: Sequence[int] = (), num_pictures: int = 4) -> Dict[str, str]:
    """Train ``cfg`` (OUTPUT_DIR is the demo folder), evaluate, sweep, draw, report.

    Returns {what: path} of the files written.
    """
    out = cfg.OUTPUT_DIR
    os.makedirs(out, exist_ok=True)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = trainer.model
    model = getattr(model, "module", model)
    results = Trainer.test(cfg, model)
    if not comm.is_main_process():
        return {}
    files = {"metrics": os.path.join(out, "metrics_final.json")}
    with open(files["metrics"], "w") as f:
        json.dump(results, f, indent=2)
    files["training curves"] = os.path.join(out, "training_curves.png")
    plot_training_curves(os.path.join(out, "metrics.json"), files["training curves"])

    dataset = cfg.DATASETS.TEST[0]
    standard = dataset[: -len("_separated")] if dataset.endswith("_separated") else dataset
    counts = list(counts) or sweep_counts(cfg.MODEL.RECURRENT.TIMESTEPS)
    notes = ""
    has_recurrence = cfg.MODEL.BACKBONE.NAME == "build_resnet_rfpn_backbone" or (
        cfg.MODEL.ROI_MASK_HEAD.NAME == "RecurrentMaskRCNNConvUpsampleHead"
    )
    if has_recurrence:
        timestep_sweep(cfg, model, counts, dataset, os.path.join(out, "timestep_sweep"))
        files["PQ against inference steps"] = os.path.join(
            out, "timestep_sweep", "timestep_sweep.png"
        )
        files["PQ per step count (CSV)"] = os.path.join(out, "timestep_sweep", "timestep_sweep.csv")
        from detectron2.data import DatasetCatalog

        record = DatasetCatalog.get(standard)[0]
        files["steps unfolding"] = os.path.join(out, "unfolding.png")
        draw_unfolding(model, cfg, record, counts, files["steps unfolding"], standard)
        notes = (
            f"Model: {os.path.basename(cfg.MODEL.BACKBONE.NAME)}, "
            f"{cfg.MODEL.RECURRENT.GRAD} with N = {cfg.MODEL.RECURRENT.TIMESTEPS}, "
            f"{cfg.SOLVER.MAX_ITER} iterations."
        )
    pictures = draw_predictions(model, cfg, standard, out, num=num_pictures)
    for i, path in enumerate(pictures):
        files[f"prediction {i + 1}"] = path
    files["report"] = write_report(out, results, files, notes)
    return files

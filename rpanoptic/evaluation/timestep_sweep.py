"""Timestep sweep: PQ of one trained model at several inference step counts, in one data pass.

For each batch the model is run once per requested count with every recurrence in sweep mode
(``rpanoptic.recurrence.sweep``): a recurrence iterates once to the largest count for its input and
answers each count from the states it kept, and the RFPN reuses its feed-forward features, so
only the read-out (the heads) is repeated per count. A C-RBP model should keep its PQ as t
grows past the N it was trained with, where a BPTT model degrades.
"""

import csv
import logging
import os
from typing import Dict, List, Sequence

from detectron2.data import build_detection_test_loader
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from detectron2.utils import comm
from tqdm import tqdm

from ..recurrence import sweep
from ..utils import eval_mode, pyplot
from .enclosure import CLOSURE_SCORES, enclosure_evaluator
from .panoptic import PanopticEvaluator

__all__ = ["timestep_sweep", "run_sweep", "write_sweep", "parse_counts"]

logger = logging.getLogger(__name__)

METRICS = ["PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"]


def parse_counts(text: str, flag: str = "--eval-timesteps") -> List[int]:
    """ "1,5,10" -> [1, 5, 10]; raises ValueError naming ``flag`` on bad input."""
    try:
        counts = sorted({int(t) for t in text.split(",")})  # an empty item ("5,,10") is an error
    except ValueError:
        counts = []
    if not counts or counts[0] < 1:
        raise ValueError(f"{flag} {text!r}: give comma-separated step counts >= 1, e.g. 1,5,10,20")
    return counts


def run_sweep(model, data_loader, counts: Sequence[int], evaluators: Dict[int, DatasetEvaluator]):
    """Feed every batch once, reading predictions at each count into ``evaluators[count]``.

    Returns {count: evaluator.evaluate()} (evaluation happens on the main process).
    """
    for evaluator in evaluators.values():
        evaluator.reset()
    with eval_mode(model):
        with sweep(model, counts) as set_count:
            for inputs in tqdm(
                data_loader, desc="timestep sweep", disable=not comm.is_main_process()
            ):
                for t in counts:
                    set_count(t)
                    evaluators[t].process(inputs, model(inputs))
    return {t: evaluators[t].evaluate() for t in counts}


def write_sweep(results: Dict[int, dict], output_dir: str, trained_timesteps: int = 0) -> str:
    """Write ``timestep_sweep.csv`` (PQ, SQ, RQ for all, things and stuff, PQ per category and the
    enclosure scenes' closure scores when the evaluators reported them) and
    ``timestep_sweep.png``; returns the CSV path."""
    plt = pyplot()

    os.makedirs(output_dir, exist_ok=True)
    rows = []
    per_class = sorted(
        {k for r in results.values() for k in (r or {}).get("panoptic_seg", {}) if "/" in k}
    )
    closure = [
        m
        for m in CLOSURE_SCORES
        if any(m in (r or {}).get("enclosure", {}) for r in results.values())
    ]
    columns = METRICS + [k for k in per_class if k.startswith("PQ/")] + closure
    for t, res in sorted(results.items()):
        found = {**(res or {}).get("panoptic_seg", {}), **(res or {}).get("enclosure", {})}
        rows.append({"timesteps": t, **{m: found.get(m, float("nan")) for m in columns}})
    path = os.path.join(output_dir, "timestep_sweep.csv")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["timesteps"] + columns)
        writer.writeheader()
        writer.writerows(rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    ts = [r["timesteps"] for r in rows]
    for m, style in (("PQ", "-o"), ("PQ_th", "--s"), ("PQ_st", ":^")):
        ax.plot(ts, [r[m] for r in rows], style, label=m)
    for m, style in zip(closure, ("-.D", "-.v")):
        ax.plot(ts, [r[m] for r in rows], style, label=f"{m} (50: closed = open)")
    if trained_timesteps:
        ax.axvline(trained_timesteps, color="gray", ls="--", label=f"trained N={trained_timesteps}")
    ax.set(xlabel="inference steps t", ylabel="PQ", title="PQ against inference steps")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, "timestep_sweep.png"), dpi=100)
    plt.close(fig)
    return path


def timestep_sweep(cfg, model, counts: Sequence[int], dataset_name: str = "", output_dir: str = ""):
    """Evaluate ``model`` at each step count on ``dataset_name`` (default: DATASETS.TEST[0]) with
    PanopticEvaluator (PQ also per category), and on enclosure scenes EnclosureEvaluator; writes
    CSV + plot to ``output_dir`` and returns {count: results}."""
    dataset_name = dataset_name or cfg.DATASETS.TEST[0]
    output_dir = output_dir or os.path.join(cfg.OUTPUT_DIR, "timestep_sweep", dataset_name)
    data_loader = build_detection_test_loader(cfg, dataset_name)
    evaluators = {}
    for t in counts:
        panoptic = PanopticEvaluator(dataset_name, os.path.join(output_dir, f"t{t}"))
        enclosure = enclosure_evaluator(dataset_name)
        evaluators[t] = panoptic if enclosure is None else DatasetEvaluators([enclosure, panoptic])
    results = run_sweep(model, data_loader, counts, evaluators)
    if comm.is_main_process():
        path = write_sweep(results, output_dir, cfg.MODEL.RECURRENT.TIMESTEPS)
        logger.info("Timestep sweep written to %s", path)
    return results

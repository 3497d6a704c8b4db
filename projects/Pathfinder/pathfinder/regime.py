"""Pathfinder in the paper's regime: at equal memory, does C-RBP run long enough to trace paths
that BPTT cannot, and does a model trained on shorter paths solve longer ones by running longer?

Geometry. One hGRU step moves information at most two kernel radii (an inhibition and an
excitation convolution), so a path of length L needs at least L / (2 r) steps to carry the cue
from one end to the other (:func:`min_steps`). In the paper (150 px, 15x15 kernels) a PF-14 path
needs about 5.4; here 9x9 kernels on the 32 px sets give the hard (14-dash) paths 5.1
(:data:`KERNEL`), the medium 3.3 and the easy 2.1.

The two parts, fixed before any run (settings of :data:`~.compare.BASE`, the models of
:data:`~.compare.MODELS`, seeds 0-2):

- :data:`EQUAL_MEMORY`, on the hard set: BPTT at the N its memory allows (6, about 1.2x the
  minimum, the paper's 6), C-RBP with the power-vector penalty at 20 (about 4x, the paper's 20,
  K = 15), BPTT at 20 (the control where memory is no object), and the feed-forward baselines.
- :data:`ZERO_SHOT`, trained on the medium set: C-RBP (power, N = 20), BPTT (N = 10), C-BPTT
  (power, N = 10: does stability alone give scaling?) and ``ff_large``; then each is evaluated,
  without retraining, on the easy, medium and hard validation sets at the step counts of
  :data:`ZERO_SHOT_COUNTS` and with per-sample halting (:data:`HALTING`), recording the mean
  steps taken per difficulty (:func:`zero_shot_rows`).
"""

import csv
import os
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .compare import BASE, MODELS, kept_path, partial_path, result_path, resumable_path
from .data import PathfinderSplit
from .fixed_point import load_trained
from .generator import DIFFICULTY, PathfinderSpec
from .train import _path_iou, label_logits, load_split

__all__ = [
    "EQUAL_MEMORY",
    "HALTING",
    "KERNEL",
    "Part",
    "ZERO_SHOT",
    "ZERO_SHOT_COUNTS",
    "evaluate_settings",
    "geometry_rows",
    "min_steps",
    "path_length",
    "plan_status",
    "zero_shot_path",
    "zero_shot_rows",
]

KERNEL = 9


@dataclass(frozen=True)
class Part:
    """One part of the experiment: the sets it trains on, its models and seeds."""

    name: str
    sets: Tuple[str, ...]
    models: Tuple[str, ...]
    seeds: Tuple[int, ...] = (0, 1, 2)


EQUAL_MEMORY = Part(
    "equal_memory",
    ("hard",),
    ("ff", "ff_large", "hgru_bptt_k9_n6", "hgru_crbp_power_k9_n20", "hgru_bptt_k9_n20"),
)
ZERO_SHOT = Part(
    "zero_shot",
    ("medium",),
    ("ff_large", "hgru_crbp_power_k9_n20", "hgru_bptt_k9_n10", "hgru_cbptt_power_k9_n10"),
)
ZERO_SHOT_COUNTS = (5, 10, 20, 40, 80, 120)
# (tolerance, solver): per-sample halting, at most max(ZERO_SHOT_COUNTS) steps.
HALTING = ((0.01, "picard"), (0.001, "picard"), (0.01, "anderson"), (0.001, "anderson"))


def path_length(spec: PathfinderSpec) -> float:
    """Length (px) of one path along its dashes and gaps."""
    return spec.segments * spec.dash + (spec.segments - 1) * spec.gap


def min_steps(spec: PathfinderSpec, kernel_size: int) -> float:
    """The fewest hGRU steps that carry information along a whole path: its length over the
    two kernel radii one step can cross (an upper bound's worth of steps for a path that curls
    back within a kernel's reach, the exact need for a straight one)."""
    radius = kernel_size // 2
    if radius < 1:
        raise ValueError(f"min_steps: kernel_size={kernel_size} has no reach; use >= 3")
    return path_length(spec) / (2 * radius)


def geometry_rows(size: int, snakes: int, kernels: Sequence[int] = (5, KERNEL)) -> List[Dict]:
    """Per difficulty and kernel size: dashes, path length, the minimum steps, and each trained
    N of the models in :data:`EQUAL_MEMORY` and :data:`ZERO_SHOT` as a multiple of it."""
    rows = []
    for name in DIFFICULTY:
        spec = PathfinderSpec.scaled(size, name, snakes)
        for k in kernels:
            need = min_steps(spec, k)
            row = dict(set=name, dashes=spec.segments, kernel=k, path_px=path_length(spec))
            row["min_steps"] = round(need, 2)
            for n in (6, 10, 20):
                row[f"N{n}_x_min"] = round(n / need, 2)
            rows.append(row)
    return rows


@torch.no_grad()
def evaluate_settings(
    model: torch.nn.Module, data: PathfinderSplit, settings: Sequence[Dict], batch: int = 256
) -> List[Dict]:
    """Accuracy, path IoU and mean steps per sample of ``model`` on ``data`` under each inference
    setting (keyword arguments of ``Recurrence.using``: ``test_timesteps``, ``halt_tol``,
    ``test_solver``); a feed-forward model is evaluated once, as its single setting."""
    model.eval()
    rec = getattr(model, "recurrence", None)
    rows = []
    for setting in settings if rec is not None else [{}]:
        correct = iou = steps = 0.0
        for i in range(0, len(data), batch):
            part = data.take(slice(i, i + batch))
            if rec is None:
                logits, dense = label_logits(model, part)
            else:
                with rec.using(**setting):
                    logits, dense = label_logits(model, part)
                steps += rec.steps.float().sum().item()
            correct += ((logits > 0).float() == part.y).sum().item()
            if dense is not None:
                iou += _path_iou(dense, part.target).sum().item()
        row = dict(setting)
        row.update(accuracy=correct / len(data), mean_steps=steps / len(data) if rec else 0.0)
        if data.target is not None:
            row["path_iou"] = iou / len(data)
        rows.append(row)
    return rows


def zero_shot_settings() -> List[Dict]:
    """The inference settings of the zero-shot evaluation: each fixed count, then each halting
    rule capped at the largest count."""
    fixed = [dict(test_timesteps=t, halt_tol=0.0, test_solver="picard") for t in ZERO_SHOT_COUNTS]
    cap = max(ZERO_SHOT_COUNTS)
    halting = [dict(test_timesteps=cap, halt_tol=tol, test_solver=s) for tol, s in HALTING]
    return fixed + halting


def zero_shot_path(results: str, model_name: str, seed: int) -> str:
    """Where the zero-shot rows of one trained model are recorded (its presence skips it)."""
    return os.path.join(results, "zero_shot", f"{model_name}_s{seed}.csv")


def zero_shot_rows(
    model_name: str, seed: int, checkpoint: str, roots: Dict[str, str], base=None
) -> List[Dict]:
    """Rows of the zero-shot evaluation of one trained model (``checkpoint``, kept by the
    comparison's ``--keep``) on each evaluation set of ``roots`` ({difficulty: folder})."""
    run = replace(base or BASE, **MODELS[model_name], seed=seed)
    model = load_trained(run, checkpoint, finished=True)
    rows = []
    for difficulty, root in roots.items():
        val = load_split(root, "val", run.task)
        for row in evaluate_settings(model, val, zero_shot_settings()):
            rows.append(dict(model=model_name, seed=seed, eval_set=difficulty, **row))
    return rows


def trained_n(model_name: str) -> Optional[int]:
    """The trained N of a recurrent model of :data:`MODELS` (None for a feed-forward one)."""
    run = replace(BASE, **MODELS[model_name])
    return run.timesteps if run.model == "hgru" else None


def _iteration(checkpoint: str) -> Optional[int]:
    """The iteration a checkpoint of :func:`~.train.train` reached (None if it cannot be read)."""
    try:
        return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["iteration"])
    except Exception:  # truncated, not a checkpoint, unpicklable: any of torch.load's failures
        return None


def _step_ms(pilot_csv: Optional[str]) -> Dict[str, float]:
    """{model: milliseconds per training step} from a pilot file (``pilot_step_cost.csv``)."""
    if not pilot_csv or not os.path.isfile(pilot_csv):
        return {}
    with open(pilot_csv, newline="") as f:
        return {r["model"]: float(r["step_ms"]) for r in csv.DictReader(f) if r.get("step_ms")}


def plan_status(
    results: str,
    keep: str,
    output: str,
    parts: Sequence[Part] = (EQUAL_MEMORY, ZERO_SHOT),
    seeds: Optional[Sequence[int]] = None,
    pilot_csv: Optional[str] = None,
    base=None,
) -> List[Dict]:
    """One row per planned run (part x set x model x seed): ``trained`` (its result file is
    there); ``iteration``, the furthest reached (from the result, the resumable checkpoint under
    ``output`` or the committed partial under ``keep``), and ``iters_left``; ``weights_kept``;
    ``evaluated`` (the zero-shot rows; None outside :data:`ZERO_SHOT`); ``core_min_left``, by
    the pilot file's step cost (None for a model it did not time; evaluation not counted); and
    ``problem``, naming a checkpoint that cannot be read (resuming would fail on it)."""
    cost = _step_ms(pilot_csv)
    rows = []
    for part in parts:
        for set_name in part.sets:
            for model in part.models:
                iters = replace(base or BASE, **MODELS[model]).iters
                for seed in seeds if seeds is not None else part.seeds:
                    trained = os.path.isfile(result_path(results, set_name, model, seed))
                    reached, problem = (iters if trained else 0), ""
                    for ckpt in () if trained else (
                        resumable_path(output, set_name, model, seed),
                        partial_path(keep, set_name, model, seed),
                    ):  # fmt: skip
                        if os.path.isfile(ckpt):
                            at = _iteration(ckpt)
                            if at is None:
                                problem = f"unreadable {ckpt}: delete it to restart the run"
                            reached = max(reached, at or 0)
                    row = dict(part=part.name, set=set_name, model=model, seed=seed)
                    row.update(trained=trained, iteration=reached, iters_left=iters - reached)
                    row["weights_kept"] = os.path.isfile(kept_path(keep, set_name, model, seed))
                    row["evaluated"] = None  # only the zero-shot part has an evaluation
                    if part.name == ZERO_SHOT.name:
                        row["evaluated"] = os.path.isfile(zero_shot_path(results, model, seed))
                    row["core_min_left"] = (
                        round(cost[model] * (iters - reached) / 60000, 1) if model in cost else None
                    )
                    row["problem"] = problem
                    rows.append(row)
    return rows

"""The Pathfinder comparison's per-set pictures that need more than accuracy: the unfolding of
one example and the cue's reach along the path. Each comes from what a run's result file
recorded when it finished (``compare`` records it), or else from the run's finished checkpoint,
so the report can be made again in a session that no longer has the checkpoints.
"""

import functools
import os
from dataclasses import replace
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from .compare import MODELS, load_results, reach_counts
from .fixed_point import is_finished, load_trained
from .reach import cue_reach, draw_cue_reach
from .train import PathfinderRun, load_split
from .unfolding import draw_unfolding, unfolding_frames

__all__ = ["recorded", "plot_set_unfolding", "plot_set_cue_reach"]


def recorded(results: str, set_name: str, key: str) -> Dict[Tuple[str, int], Dict]:
    """``key`` ("fixed_point", "unfolding" or "cue_reach") of every result file of ``set_name``
    that holds it, by (model, seed)."""
    found = {}
    for model, runs in load_results(results).get(set_name, {}).items():
        for result in runs:
            if key in result:
                found[model, result["run"]["seed"]] = result[key]
    return found


def _seed_records(
    base: PathfinderRun,
    results: str,
    set_name: str,
    checkpoints: str,
    key: str,
    compute: Callable[[PathfinderRun, torch.nn.Module], Dict],
    seeds: Sequence[int],
    hgru_only: bool,
) -> Dict[str, Dict[int, Dict]]:
    """{model: {seed: record}} for the models of ``MODELS`` (the hGRUs only with ``hgru_only``)
    and ``seeds``: ``key`` of the result file when it holds it, else ``compute(run, model)`` on
    the finished checkpoint ``<checkpoints>/<model>_s<seed>/checkpoint.pth``; neither: left
    out."""
    stored = recorded(results, set_name, key)
    found: Dict[str, Dict[int, Dict]] = {}
    for model, changes in MODELS.items():
        for seed in seeds:
            run = replace(base, **changes, seed=seed)
            if hgru_only and run.model != "hgru":
                continue
            checkpoint = os.path.join(checkpoints, f"{model}_s{seed}", "checkpoint.pth")
            if (model, seed) in stored:
                found.setdefault(model, {})[seed] = stored[model, seed]
            elif is_finished(run, checkpoint):
                trained = load_trained(run, checkpoint, finished=True)
                found.setdefault(model, {})[seed] = compute(run, trained)
    return found


def plot_set_unfolding(
    base: PathfinderRun, results: str, set_name: str, root: str, checkpoints: str, path: str
) -> Optional[str]:
    """``path``: the unfolding of seed 0 of every hGRU model of ``MODELS`` on ``set_name``, from
    the frames its result file recorded or else from its finished checkpoint under
    ``checkpoints`` (``<model>_s0/checkpoint.pth``); models with neither are left out. Returns
    the file, or None when no model could be drawn."""
    val = functools.lru_cache(maxsize=None)(functools.partial(load_split, root, "val"))

    def frames(run, model):
        return unfolding_frames(model, val(run.task))

    found = _seed_records(base, results, set_name, checkpoints, "unfolding", frames, (0,), True)
    rows = {model: seeds[0] for model, seeds in found.items()}
    return draw_unfolding(rows, root, path) if rows else None


def plot_set_cue_reach(
    base: PathfinderRun,
    results: str,
    set_name: str,
    root: str,
    checkpoints: str,
    path: str,
    seeds: Sequence[int] = (0, 1, 2),
) -> Optional[str]:
    """``path``: the cue's reach along the path (``reach.cue_reach``) of every model of
    ``MODELS`` on ``set_name`` (trace task), mean over ``seeds``, at 1 step for the
    feed-forward models and at the trained N (solid) and 40 (dashed) for the hGRUs; records
    from the result files or else from finished checkpoints. None when there is nothing to
    draw (or the task is not the trace task)."""
    if base.task != "trace":
        return None
    val = functools.lru_cache(maxsize=None)(functools.partial(load_split, root, "val"))

    def reach(run, model):
        return cue_reach(model, val(run.task), reach_counts(run))

    found = _seed_records(base, results, set_name, checkpoints, "cue_reach", reach, seeds, False)
    curves = {}
    for model, by_seed in found.items():
        run = replace(base, **MODELS[model])
        steps = [run.timesteps, 40] if run.model == "hgru" else [1]
        curves[model] = {"records": list(by_seed.values()), "steps": steps}
    if not curves:
        return None
    return draw_cue_reach(curves, path, f"Pathfinder {set_name}: reach of the cue (seeds' mean)")

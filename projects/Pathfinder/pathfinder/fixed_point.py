"""Is a trained Pathfinder hGRU at a fixed point, and is RBP's gradient valid there?

RBP and C-RBP assume that the forward iteration has reached a state h* = F(x, h*) where the
step is a contraction (spectral radius of J = dF/dh below 1): then the Neumann series of the
backward pass converges to the implicit gradient. Accuracy that stays flat past the trained N
does not show this (a read-out can be steady while the state keeps moving), so this module
measures it on a trained checkpoint:

- ``residual``: ||F(x, h_t) - h_t|| / ||h_t|| after t steps (0 at a fixed point);
- ``spectral_radius``: the power-iteration estimate at h_t (``diagnostics.spectral_radius``);
- ``ones_above_tau``: after N steps, the share of the column sums 1^T J (what the authors'
  penalty bounds) above tau, to set against the spectral radius;
- ``fallback_fraction`` and ``neumann_terms``: on one training batch, the share of samples whose
  RBP series the engine's safeguard stopped because a term outgrew the first (a divergent
  series) and the mean number of terms added. It is measured with the model's weights in "rbp"
  mode whatever mode trained them, so that BPTT-trained models are asked the same question.
"""

import csv
import os
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from rpanoptic.recurrence.diagnostics import fixed_point_residual, spectral_radius
from rpanoptic.recurrence.lcp import ones_vjp
from rpanoptic.utils import atomic_write

from .data import PathfinderSplit, load_split
from .train import PathfinderRun, _loss, build_model, same_settings

__all__ = [
    "is_finished",
    "load_trained",
    "fixed_point_diagnostics",
    "fixed_point_row",
    "fixed_point_table",
]


def is_finished(run: PathfinderRun, checkpoint: str) -> bool:
    """Whether ``checkpoint`` exists and holds ``run`` trained to its last iteration."""
    if not os.path.isfile(checkpoint):
        return False
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return same_settings(state.get("run"), run) and state.get("iteration") == run.iters


def load_trained(run: PathfinderRun, checkpoint: str, finished: bool = False) -> torch.nn.Module:
    """The model of ``run`` with the weights of ``checkpoint`` (a ``train`` checkpoint written by
    a run with exactly these settings), in eval mode. With ``finished``, a checkpoint of a run
    that has not reached ``run.iters`` is refused (ValueError)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not same_settings(state.get("run"), run):
        raise ValueError(f"{checkpoint} was written by a run with other settings")
    if finished and state.get("iteration") != run.iters:
        raise ValueError(
            f"{checkpoint} is at iteration {state.get('iteration')} of {run.iters}: its run has "
            "not finished (rerun the comparison to resume it)"
        )
    model = build_model(run)
    model.load_state_dict(state["model"])
    return model.eval()


def fixed_point_diagnostics(
    model: torch.nn.Module,
    run: PathfinderRun,
    val: PathfinderSplit,
    train: PathfinderSplit,
    counts: Sequence[int] = (),
    power_iters: int = 40,
) -> Dict:
    """Median residual and spectral radius over ``val``'s images after each step count in
    ``counts`` (default: N and 40), and the RBP fallback fraction and mean Neumann terms of one
    training step on the first ``run.batch`` images of ``train``."""
    rec = model.recurrence
    model.eval()
    out: Dict = {"residual": {}, "spectral_radius": {}}
    for t in counts or (run.timesteps, 40):
        with torch.no_grad(), rec.using(test_timesteps=t), rec.recording() as record:
            model(val.x)
        x, h = record.input, record.state
        out["residual"][t] = fixed_point_residual(rec.cell, x, h).median().item()
        radius = spectral_radius(rec.cell, x, h, iters=power_iters)
        out["spectral_radius"][t] = radius.median().item()
        if t == run.timesteps:
            with torch.enable_grad():
                h_in = h.detach().requires_grad_()
                sums = ones_vjp(rec.cell(x, h_in), h_in, create_graph=False)
            out["ones_above_tau"] = (sums > run.lcp_tau).float().mean().item()
    probe = build_model(replace(run, grad="rbp")).to(val.x.device)
    probe.load_state_dict(model.state_dict())
    probe.train()
    probe.recurrence.reset_neumann_stats()
    loss, _ = _loss(probe, train.take(slice(0, run.batch)), replace(run, grad="rbp"))
    loss.backward()
    fallbacks, terms, series = probe.recurrence.neumann_stats("cpu").tolist()
    out["fallback_fraction"] = fallbacks / max(series, 1)
    out["neumann_terms"] = terms / max(series, 1)
    return out


def fixed_point_row(name: str, seed: int, found: Dict) -> Dict:
    """One row of ``fixed_point.csv`` from what :func:`fixed_point_diagnostics` returned (or its
    JSON copy in a result file, whose step counts are strings)."""
    row = {"model": name, "seed": seed}
    for key in ("residual", "spectral_radius"):
        row.update({f"{key}_t{t}": v for t, v in found[key].items()})
    row["ones_above_tau"] = found.get("ones_above_tau", float("nan"))
    row["fallback_fraction"] = found["fallback_fraction"]
    row["neumann_terms"] = found["neumann_terms"]
    return row


def _rows_written_before(path: str) -> Dict[Tuple[str, int], Dict]:
    """The rows of an existing ``fixed_point.csv``, by (model, seed), numbers as floats."""
    if not os.path.isfile(path):
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    kept = {}
    for row in rows:
        model, seed = row["model"], int(row["seed"])
        values = {k: float(v) for k, v in row.items() if k not in ("model", "seed") and v != ""}
        kept[model, seed] = {"model": model, "seed": seed, **values}
    return kept


def fixed_point_table(
    base: PathfinderRun,
    models: Dict[str, Dict],
    root: str,
    checkpoints: str,
    results: str,
    seeds: Sequence[int] = (0,),
    images: int = 64,
    recorded: Optional[Dict[Tuple[str, int], Dict]] = None,
) -> List[Dict]:
    """One row of :func:`fixed_point_diagnostics` per hGRU model of ``models`` (name -> changes
    to ``base``, as ``compare.MODELS``) and seed, written to ``fixed_point.csv`` in ``results``
    (ordered as ``models``, then by seed). Returns the rows. For each (model, seed), in this
    order of preference:

    - ``recorded[(name, seed)]``: the diagnostics a run stored in its result file when it
      finished (the comparison does), which need no checkpoint;
    - for a seed of ``seeds``, the diagnostics of its checkpoint
      ``<checkpoints>/<name>_s<seed>/checkpoint.pth`` if that run has finished, on the first
      ``images`` val images of ``root``;
    - the row already in ``results/fixed_point.csv``: checkpoints are not kept between
      sessions, so a table made again elsewhere keeps the rows measured before.
    """
    recorded = recorded or {}
    before = _rows_written_before(os.path.join(results, "fixed_point.csv"))
    data = None
    rows = []
    for name, changes in models.items():
        run0 = replace(base, **changes)
        if run0.model != "hgru":
            continue
        known = {s for (m, s) in list(recorded) + list(before) if m == name}
        for seed in sorted(set(seeds) | known):
            run = replace(run0, seed=seed)
            checkpoint = os.path.join(checkpoints, f"{name}_s{seed}", "checkpoint.pth")
            if (name, seed) in recorded:
                rows.append(fixed_point_row(name, seed, recorded[name, seed]))
            elif seed in seeds and is_finished(run, checkpoint):  # not a run cut off
                if data is None:
                    val = load_split(root, "val", base.task).take(slice(0, images))
                    data = val, load_split(root, "train", base.task)
                found = fixed_point_diagnostics(load_trained(run, checkpoint), run, *data)
                rows.append(fixed_point_row(name, seed, found))
            elif (name, seed) in before:
                rows.append(before[name, seed])
    if rows:
        header = list(dict.fromkeys(k for r in rows for k in r))

        def write(f):
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)

        atomic_write(os.path.join(results, "fixed_point.csv"), write, binary=False)
    return rows

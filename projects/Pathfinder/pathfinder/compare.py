"""The Pathfinder comparison: feed-forward baselines and the hGRU in three learning modes,
trained on the same sets with the same settings and seeds, then tabled and drawn.

Each run's ``result.json`` (history included, no checkpoint) is copied to
``<results>/<set>/<model>_s<seed>.json`` as soon as it finishes; a run whose file is already
there is skipped, so the comparison can be cut into sessions and resumed. The summary
(``summary.csv``, ``summary.md``) and the pictures are made from those files alone.
"""

import csv
import glob
import json
import os
import shutil
import statistics
from dataclasses import replace
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from rpanoptic.utils import atomic_write, pyplot

from .data import PathfinderSplit
from .fixed_point import fixed_point_diagnostics
from .generator import DIFFICULTY
from .reach import cue_reach
from .train import PathfinderRun, build_model, load_split, measure_step, run_and_report
from .unfolding import plot_unfolding, unfolding_frames

__all__ = [
    "MODELS",
    "DEFAULT_MODELS",
    "run_comparison",
    "keep_weights",
    "kept_path",
    "mean_sd",
    "partial_path",
    "result_path",
    "resumable_path",
    "save_partial",
    "BASE",
    "load_results",
    "reach_counts",
    "summarize",
    "memory_vs_steps",
    "plot_comparison",
    "plot_unfolding",
]

# The settings fixed in advance for every model (the models change only what MODELS says).
BASE = PathfinderRun(
    task="trace",
    channels=8,
    kernel_size=5,
    timesteps=10,
    neumann_steps=15,
    lcp_weight=10.0,
    iters=10000,
    batch=16,
    lr=3e-3,
    checkpoint_period=1000,
)

# The compared models, as changes to the shared settings. "ff" is about the hGRU model's size
# (8 channels); "ff_large" several times it. RBP is C-RBP without the penalty.
MODELS: Dict[str, Dict] = {
    "ff": dict(model="ff", blocks=4),
    "ff_large": dict(model="ff", blocks=8, channels=16),
    "hgru_bptt": dict(model="hgru", grad="bptt"),
    "hgru_rbp": dict(model="hgru", grad="rbp", lcp_weight=0.0),
    "hgru_crbp": dict(model="hgru", grad="crbp"),
    # Not in the default run: C-RBP with the penalty on the power-iteration vector (lcp.py).
    "hgru_crbp_power": dict(model="hgru", grad="crbp", lcp_vector="power"),
    # Not in the default run either: the same at twice the steps. C-RBP keeps the same memory
    # at any N (only its time grows), so it can train where the state is nearer its fixed point.
    "hgru_crbp_power_n20": dict(model="hgru", grad="crbp", lcp_vector="power", timesteps=20),
    # The same with the K = 15 products combined by GMRES (recurrence/krylov.py) instead of
    # summed: the same products; whether the gradient gets nearer the implicit one depends on
    # the Jacobian's spectrum (at the trained cell it hardly does: docs/BENCHMARKS.md).
    "hgru_crbp_power_n20_gmres": dict(
        model="hgru", grad="crbp", lcp_vector="power", timesteps=20, backward_solver="gmres"
    ),
    # The paper's regime (pathfinder/regime.py): 9x9 kernels, so that a hard (14-dash) path needs
    # about 5 steps at the least, as PF-14 does in the paper; BPTT at the N its memory allows
    # (6, about 1.1x that), C-RBP at about 4x (20), BPTT at 20 as the control where memory is no
    # object; on the medium set BPTT and C-BPTT at 10 for the zero-shot test.
    **{
        f"hgru_{grad}_k9_n{n}": dict(
            model="hgru",
            grad=grad.split("_")[0],
            kernel_size=9,
            timesteps=n,
            eval_steps=sorted({1, n // 2, n, 2 * n, 3 * n, 40, 60}),
            **({"lcp_vector": "power"} if grad.endswith("_power") else {}),
        )
        for grad, n in [
            ("bptt", 6),
            ("bptt", 10),
            ("bptt", 20),
            ("cbptt_power", 10),
            ("crbp_power", 20),
        ]
    },
}
DEFAULT_MODELS = ("ff", "ff_large", "hgru_bptt", "hgru_rbp", "hgru_crbp")


def reach_counts(run: PathfinderRun) -> List[int]:
    """The step counts of a run's cue-reach record: 1, the trained N and 40."""
    return sorted({1, run.timesteps, 40}) if run.model == "hgru" else [1]


def _trained_record(run: PathfinderRun, model, train: PathfinderSplit, val: PathfinderSplit):
    """What the report needs of a trained model besides its accuracy, kept in its result file
    so that the report needs no checkpoint (checkpoints do not outlive a session): for the
    trace task the cue's reach along the path (``reach.cue_reach``), and for an hGRU its
    fixed-point diagnostics on the first 64 val images and the unfolding frames."""
    found = {}
    if run.task == "trace":
        found["cue_reach"] = cue_reach(model, val, reach_counts(run))
    if run.model == "hgru":
        found["fixed_point"] = fixed_point_diagnostics(model, run, val.take(slice(0, 64)), train)
        found["unfolding"] = unfolding_frames(model, val)
    return found


def result_path(results: str, set_name: str, model: str, seed: int) -> str:
    """Where :func:`run_comparison` records a finished run's result (its presence skips it)."""
    return os.path.join(results, set_name, f"{model}_s{seed}.json")


def resumable_path(output: str, set_name: str, model: str, seed: int) -> str:
    """The checkpoint under ``output`` that :func:`run_comparison` writes and resumes."""
    return os.path.join(output, set_name, f"{model}_s{seed}", "checkpoint.pth")


def run_comparison(
    sets: Dict[str, str],
    base: PathfinderRun,
    results: str,
    output: str,
    models: Sequence[str] = DEFAULT_MODELS,
    seeds: Sequence[int] = (0, 1, 2),
    log: Callable[[str], None] = print,
    device: str = "cpu",
    keep: Optional[str] = None,
) -> List[str]:
    """Train and evaluate every (set, model, seed) whose result file is missing, on ``device``.
    ``sets`` maps a set's name (e.g. "easy") to its folder. Checkpoints go to ``output``
    (resumed when a run was cut off). With ``keep``, each finished run's weights (no optimizer
    state: tens of kB) are also written to ``keep/<set>/<model>_s<seed>.pth``, for evaluations
    made later without retraining (:func:`~.fixed_point.load_trained` reads them). Returns the
    result files written now."""
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ValueError(f"pathfinder comparison: unknown models {unknown}; known: {list(MODELS)}")
    written = []
    for set_name, root in sets.items():
        for model in models:
            for seed in seeds:
                target = result_path(results, set_name, model, seed)
                if os.path.isfile(target):
                    log(f"skip {set_name}/{model} seed {seed}: {target} exists")
                    continue
                run = replace(base, **MODELS[model], seed=seed)
                resumable = resumable_path(output, set_name, model, seed)
                out = os.path.dirname(resumable)
                saved = partial_path(keep, set_name, model, seed) if keep else ""
                if saved and os.path.isfile(saved) and not os.path.isfile(resumable):
                    os.makedirs(out, exist_ok=True)  # resume where another session stopped
                    shutil.copyfile(saved, resumable)
                    log(f"resume {set_name}/{model} seed {seed} from {saved}")
                log(f"run {set_name}/{model} seed {seed} -> {out}")
                extra = partial(_trained_record, run)
                run_and_report(run, root, out, log, device=device, extra=extra)
                if keep:
                    keep_weights(resumable, kept_path(keep, set_name, model, seed))
                    if os.path.isfile(saved):
                        os.remove(saved)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(os.path.join(out, "result.json"), target + ".tmp")
                os.replace(target + ".tmp", target)
                written.append(target)
    return written


def kept_path(keep: str, set_name: str, model: str, seed: int) -> str:
    """Where ``run_comparison(..., keep=keep)`` keeps a finished run's weights."""
    return os.path.join(keep, set_name, f"{model}_s{seed}.pth")


def partial_path(keep: str, set_name: str, model: str, seed: int) -> str:
    """Where :func:`save_partial` keeps an unfinished run's whole checkpoint (optimizer state
    included), from which ``run_comparison(..., keep=keep)`` resumes it in another session."""
    return kept_path(keep, set_name, model, seed)[: -len(".pth")] + ".partial.pth"


def save_partial(output: str, keep: str, sets, models, seeds) -> List[str]:
    """Copy the checkpoint of every unfinished run of ``sets`` x ``models`` x ``seeds`` under
    ``output`` to its :func:`partial_path` (for a run cut off by the end of a session: commit
    the files, and the next session resumes them). Returns the files written."""
    written = []
    for set_name in sets:
        for model in models:
            for seed in seeds:
                source = resumable_path(output, set_name, model, seed)
                if not os.path.isfile(source) or os.path.isfile(
                    kept_path(keep, set_name, model, seed)
                ):
                    continue
                target = partial_path(keep, set_name, model, seed)
                with open(source, "rb") as f:
                    data = f.read()
                atomic_write(target, lambda out, data=data: out.write(data))
                written.append(target)
    return written


def keep_weights(checkpoint: str, path: str) -> None:
    """Write the settings, iteration and weights of a finished run's ``checkpoint`` to ``path``
    (atomically), without the optimizer state that only resuming needs."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    kept = {k: state[k] for k in ("run", "iteration", "model")}
    atomic_write(path, lambda f: torch.save(kept, f))


def load_results(results: str) -> Dict[str, Dict[str, List[Dict]]]:
    """{set: {model: [result, ...]}} from the result files."""
    table: Dict[str, Dict[str, List[Dict]]] = {}
    for path in sorted(glob.glob(os.path.join(results, "*", "*_s*.json"))):
        set_name = os.path.basename(os.path.dirname(path))
        model = os.path.basename(path).rsplit("_s", 1)[0]
        with open(path) as f:
            table.setdefault(set_name, {}).setdefault(model, []).append(json.load(f))
    return table


def mean_sd(values: Sequence[float]) -> str:
    """ "mean ± sample sd" of ``values`` to 3 decimals ("-" for none, sd 0 for one)."""
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def _at(result: Dict, key: str, count) -> Optional[float]:
    values = result.get(key) or {}
    return values.get(str(count), values.get(count))


def summarize(results: str) -> List[Dict]:
    """One row per (set, model): seeds, parameters, accuracy (and path IoU for the trace task)
    at the trained N, 2N, 3N and the largest count evaluated (feed-forward: its one value, in
    the N column), drift, spectral radius, memory kept for backward and step time; written to
    ``summary.csv`` and ``summary.md`` in ``results``."""
    rows = []
    for set_name, models in load_results(results).items():
        for model in sorted(models, key=lambda m: list(MODELS).index(m) if m in MODELS else 99):
            runs = models[model]
            hgru = runs[0]["run"]["model"] == "hgru"
            n = runs[0]["run"]["timesteps"] if hgru else 1
            last = max(int(k) for k in runs[0]["accuracy"]) if hgru else 1
            row = {"set": set_name, "model": model, "seeds": len(runs)}
            row["params"] = runs[0]["params"]
            at = (("N", n), ("2N", 2 * n), ("3N", 3 * n), ("last", last)) if hgru else (("N", 1),)
            for name, key in (("accuracy", "accuracy"), ("path_iou", "path_iou")):
                for label, count in at:
                    values = [v for r in runs if (v := _at(r, key, count)) is not None]
                    row[f"{name}_{label}"] = mean_sd(values)
            row["N / last"] = f"{n} / {last}" if hgru else "-"
            for key in ("drift", "spectral_radius", "saved_mb", "step_ms"):
                values = [r[key] for r in runs if key in r]
                row[key] = f"{statistics.mean(values):.3g}" if values else "-"
            rows.append(row)
    if rows:
        header = list(dict.fromkeys(k for r in rows for k in r))  # ff rows lack 2N, 3N, last
        rows = [{h: r.get(h, "-") for h in header} for r in rows]
        atomic_write(
            os.path.join(results, "summary.csv"),
            lambda f: _write_csv(f, header, rows),
            binary=False,
        )
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
        atomic_write(
            os.path.join(results, "summary.md"),
            lambda f: f.write("\n".join(lines) + "\n"),
            binary=False,
        )
    return rows


def memory_vs_steps(
    base: PathfinderRun,
    root: str,
    results: str,
    counts: Sequence[int] = (2, 5, 10, 20, 40),
    grads: Sequence[str] = ("bptt", "crbp"),
) -> List[Dict]:
    """Memory kept for backward and step time of the hGRU model trained with each mode in
    ``grads`` at each step count N in ``counts`` (untrained weights: what is kept does not
    depend on their values), on a batch of ``root``'s train split; written to
    ``memory_vs_steps.csv`` and ``memory_vs_steps.png`` in ``results``. This is the paper's
    "C-RBP at large N within the memory of BPTT at small N", measured on this model."""
    data = load_split(root, "train", base.task)
    rows = []
    for grad in grads:
        for n in counts:
            run = replace(base, **{**MODELS["hgru_crbp"], "grad": grad, "timesteps": n})
            rows.append({"grad": grad, "N": n, **measure_step(build_model(run), data, run)})
    header = ["grad", "N", "saved_mb", "step_ms"]
    atomic_write(
        os.path.join(results, "memory_vs_steps.csv"),
        lambda f: _write_csv(f, header, rows),
        binary=False,
    )
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for grad in grads:
        mine = [r for r in rows if r["grad"] == grad]
        for ax, key in zip(axes, ("saved_mb", "step_ms")):
            ax.plot([r["N"] for r in mine], [r[key] for r in mine], marker="o", label=grad)
    for ax, label in zip(axes, ("memory kept for backward (MB)", "training step (ms)")):
        ax.set_xlabel("training steps N")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(f"Pathfinder hGRU, batch {base.batch}: cost against N")
    fig.tight_layout()
    fig.savefig(os.path.join(results, "memory_vs_steps.png"), dpi=110)
    plt.close(fig)
    return rows


def _write_csv(f, header, rows):
    writer = csv.DictWriter(f, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)


def plot_comparison(results: str, sets: Optional[Sequence[str]] = None) -> List[str]:
    """For each set of ``sets`` (default: every set with results), ``<set>/accuracy_vs_steps.png``
    under ``results`` (mean and band over seeds per model; the feed-forward models as flat
    lines) and, when there are several sets, ``accuracy_vs_set.png`` (accuracy at the trained N
    per set and model). Returns the files."""
    plt = pyplot()
    table, files = load_results(results), []
    sets = [sets] if isinstance(sets, str) else sets
    for main_set in [s for s in (sets or sorted(table)) if s in table]:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for model, runs in table[main_set].items():
            for ax, key in zip(axes, ("accuracy", "path_iou")):
                if not runs[0].get(key):
                    continue
                counts = sorted(int(k) for k in runs[0][key])
                values = np.array([[_at(r, key, c) for c in counts] for r in runs], dtype=float)
                if len(counts) == 1:  # feed-forward: one value, drawn across the steps
                    counts = [1, 40]
                    values = np.repeat(values, 2, axis=1)
                mean, lo, hi = values.mean(0), values.min(0), values.max(0)
                line = ax.plot(counts, mean, marker="o", ms=3, label=f"{model} ({len(runs)})")
                ax.fill_between(counts, lo, hi, alpha=0.2, color=line[0].get_color())
        for ax, key in zip(axes, ("accuracy", "path IoU")):
            ax.set_xlabel("inference steps")
            ax.set_ylabel(f"val {key}")
            ax.set_xscale("log")
        axes[0].axhline(0.5, color="grey", lw=0.8, ls=":")
        axes[0].legend(fontsize=7)
        fig.suptitle(f"Pathfinder {main_set}: mean and range over seeds")
        fig.tight_layout()
        files.append(os.path.join(results, main_set, "accuracy_vs_steps.png"))
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    if len(table) > 1:
        fig, ax = plt.subplots(figsize=(5, 4))
        order = list(DIFFICULTY)  # easy, medium, hard; other names after them
        names = sorted(table, key=lambda n: (order.index(n) if n in order else len(order), n))
        models = sorted({m for s in table.values() for m in s})
        for k, model in enumerate(models):
            means, spread = [], [[], []]
            for name in names:
                runs = table[name].get(model, [])
                n = runs[0]["run"]["timesteps"] if runs and runs[0]["run"]["model"] == "hgru" else 1
                vals = [v for r in runs if (v := _at(r, "accuracy", n)) is not None]
                mean = statistics.mean(vals) if vals else np.nan
                means.append(mean)
                spread[0].append(mean - min(vals) if vals else 0)
                spread[1].append(max(vals) - mean if vals else 0)
            x = np.arange(len(names)) + 0.04 * (k - (len(models) - 1) / 2)  # side by side
            ax.errorbar(x, means, yerr=spread, marker="o", capsize=3, label=model)
        ax.set_xticks(range(len(names)), names)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_ylabel("val accuracy at the trained N\n(mean, range over seeds)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        files.append(os.path.join(results, "accuracy_vs_set.png"))
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    return files

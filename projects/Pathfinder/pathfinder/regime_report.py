"""Tables and pictures of the paper's-regime experiment (:mod:`.regime`): the geometry, the
equal-memory comparison with paired tests, and the zero-shot evaluation across difficulties.
Everything is made from the result files, so it can be made again without checkpoints."""

import csv
import glob
import os
import statistics
from typing import Dict, List, Tuple

from scipy import stats

from rpanoptic.utils import atomic_write, pyplot

from .compare import load_results, mean_sd
from .regime import ZERO_SHOT, ZERO_SHOT_COUNTS, trained_n

__all__ = [
    "PAIRS",
    "markdown_table",
    "paired_rows",
    "plot_zero_shot",
    "read_zero_shot",
    "write_markdown",
    "zero_shot_table",
]

# (model A, model B, step count of A, step count of B): "n" is the model's trained N.
PAIRS: Tuple[Tuple[str, str, object, object], ...] = (
    ("hgru_crbp_power_k9_n20", "hgru_bptt_k9_n6", "n", "n"),
    ("hgru_crbp_power_k9_n20", "hgru_bptt_k9_n6", 60, 60),
    ("hgru_crbp_power_k9_n20", "hgru_bptt_k9_n20", "n", "n"),
    ("hgru_crbp_power_k9_n20", "hgru_bptt_k9_n20", 60, 60),
    ("hgru_crbp_power_k9_n20", "ff_large", "n", "n"),
    ("hgru_bptt_k9_n6", "ff_large", "n", "n"),
    ("hgru_bptt_k9_n20", "ff_large", "n", "n"),
)


def _per_seed(runs: List[Dict], key: str, count) -> Dict[int, float]:
    """{seed: value of ``key`` ("accuracy" or "path_iou") at ``count``} of a model's runs;
    ``count`` "n" is the trained N; a feed-forward model has one value whatever the count."""
    found = {}
    for result in runs:
        values = result.get(key, {})
        n = result["run"]["timesteps"] if result["run"]["model"] == "hgru" else None
        at = str(n if count == "n" else count)
        if len(values) == 1:
            at = next(iter(values))
        if at in values:
            found[result["run"]["seed"]] = values[at]
    return found


def paired_rows(results: str, set_name: str = "hard", pairs=PAIRS) -> List[Dict]:
    """Per pair of :data:`PAIRS` and metric (accuracy, path IoU): the seeds both have, the mean
    and sample standard deviation of the paired difference A - B, and the two-sided p-value of
    the paired t-test (None with fewer than two seeds, or no spread)."""
    table = load_results(results).get(set_name, {})
    rows = []
    for a, b, at_a, at_b in pairs:
        for key in ("accuracy", "path_iou"):
            va, vb = _per_seed(table.get(a, []), key, at_a), _per_seed(table.get(b, []), key, at_b)
            seeds = sorted(set(va) & set(vb))
            diffs = [va[s] - vb[s] for s in seeds]
            p = None
            if len(diffs) > 1 and statistics.stdev(diffs) > 0:
                p = float(stats.ttest_rel([va[s] for s in seeds], [vb[s] for s in seeds]).pvalue)
            rows.append(
                dict(
                    set=set_name,
                    a=f"{a} @ {at_a}",
                    b=f"{b} @ {at_b}",
                    metric=key,
                    seeds=len(seeds),
                    a_mean=statistics.mean(va[s] for s in seeds) if seeds else None,
                    b_mean=statistics.mean(vb[s] for s in seeds) if seeds else None,
                    diff=mean_sd(diffs),
                    p=p,
                )
            )
    return rows


def read_zero_shot(folder: str) -> List[Dict]:
    """Every row of the zero-shot files in ``folder`` (one CSV per model and seed)."""
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "*_s*.csv"))):
        with open(path) as f:
            rows += list(csv.DictReader(f))
    return rows


def _setting(row: Dict) -> str:
    if not row.get("test_timesteps"):  # a feed-forward model: one setting
        return "-"
    if float(row["halt_tol"]) > 0:
        return f"halt {row['halt_tol']} {row['test_solver']}"
    return f"t={row['test_timesteps']}"


def zero_shot_table(rows: List[Dict]) -> List[Dict]:
    """One row per (model, evaluation set, setting): accuracy and path IoU as mean ± sd over
    seeds, mean steps taken, and the seeds."""
    groups: Dict[Tuple[str, str, str], List[Dict]] = {}
    for row in rows:
        setting = "-" if trained_n(row["model"]) is None else _setting(row)
        groups.setdefault((row["model"], row["eval_set"], setting), []).append(row)
    order = {m: i for i, m in enumerate(ZERO_SHOT.models)}
    out = []
    for (model, eval_set, setting), group in sorted(
        groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1], kv[0][2])
    ):
        ff = trained_n(model) is None
        out.append(
            dict(
                model=model,
                eval_set=eval_set,
                setting=setting,
                seeds=len(group),
                accuracy=mean_sd([float(r["accuracy"]) for r in group]),
                path_iou=mean_sd([float(r["path_iou"]) for r in group if r.get("path_iou")]),
                mean_steps=(
                    "-" if ff else f"{statistics.mean(float(r['mean_steps']) for r in group):.1f}"
                ),
            )
        )
    return out


def markdown_table(rows: List[Dict]) -> str:
    if not rows:
        return "(no rows)\n"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [f"{r[h]:.3g}" if isinstance(r[h], float) else str(r[h]) for h in header]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_zero_shot(rows: List[Dict], path: str) -> str:
    """``path``: per evaluation set, accuracy against inference steps (mean and range over
    seeds) of each recurrent model, the feed-forward model as a flat line, and the halting
    rules as markers at their mean steps."""
    plt = pyplot()
    sets = [s for s in ("easy", "medium", "hard") if any(r["eval_set"] == s for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(sets)), figsize=(5 * max(1, len(sets)), 4), sharey=True)
    axes = list(axes) if len(sets) > 1 else [axes]
    colors = {m: f"C{i}" for i, m in enumerate(ZERO_SHOT.models)}
    for ax, eval_set in zip(axes, sets):
        mine = [r for r in rows if r["eval_set"] == eval_set]
        for model in ZERO_SHOT.models:
            runs = [r for r in mine if r["model"] == model]
            if not runs:
                continue
            if trained_n(model) is None:
                acc = statistics.mean(float(r["accuracy"]) for r in runs)
                ax.axhline(acc, color=colors[model], ls=":", label=model)
                continue
            fixed = [r for r in runs if float(r["halt_tol"]) == 0]
            counts = sorted({int(r["test_timesteps"]) for r in fixed})
            by_t = [
                [float(r["accuracy"]) for r in fixed if int(r["test_timesteps"]) == t]
                for t in counts
            ]
            mean = [statistics.mean(v) for v in by_t]
            ax.plot(counts, mean, marker="o", color=colors[model], label=model)
            ax.fill_between(counts, [min(v) for v in by_t], [max(v) for v in by_t],
                            color=colors[model], alpha=0.15)  # fmt: skip
            ax.axvline(trained_n(model), color=colors[model], lw=0.6, alpha=0.5)
            halting = [
                r for r in runs if float(r["halt_tol"]) > 0 and r["test_solver"] == "anderson"
            ]
            for tol in sorted({r["halt_tol"] for r in halting}):
                group = [r for r in halting if r["halt_tol"] == tol]
                ax.scatter(
                    [statistics.mean(float(r["mean_steps"]) for r in group)],
                    [statistics.mean(float(r["accuracy"]) for r in group)],
                    marker="x" if float(tol) >= 0.01 else "+", s=60, color=colors[model],
                )  # fmt: skip
        ax.set(xscale="log", xlabel="inference steps (x, +: Anderson halting 0.01, 0.001)",
               title=f"trained on medium, evaluated on {eval_set}")  # fmt: skip
        ax.set_xticks(list(ZERO_SHOT_COUNTS), [str(t) for t in ZERO_SHOT_COUNTS])
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def write_markdown(path: str, sections: Dict[str, str]) -> str:
    text = "".join(f"## {title}\n\n{body}\n" for title, body in sections.items())
    atomic_write(path, lambda f: f.write(text), binary=False)
    return path

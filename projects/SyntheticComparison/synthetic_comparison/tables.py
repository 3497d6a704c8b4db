"""Tables, statistics and plots of a comparison of models trained with several seeds (the
results of ``synthetic_comparison.plan``): mean and sample standard deviation over seeds, a
paired t-test of each model against its baseline over the seeds both have, and PQ against
inference steps."""

import csv
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from scipy import stats

from rpanoptic.evaluation.enclosure import CLOSURE_SCORES
from rpanoptic.utils import pyplot

__all__ = [
    "COUNTS",
    "METRICS",
    "COSTS",
    "CLOSURE",
    "summarize",
    "paired_tests",
    "step_gains",
    "write_comparison",
]

COUNTS = [1, 2, 3, 5, 10, 20, 30]  # inference steps swept for every recurrent model
METRICS = ["PQ", "PQ_th", "PQ_st", "SQ", "RQ"]
COSTS = ["params_M", "train_peak_mb", "step_s", "infer_img_s"]
# On the enclosure scenes: of the tokens and ground inside loops, how many get closed vs open
# right (rpanoptic.evaluation.enclosure; balanced, so 50 = every loop treated alike).
CLOSURE = CLOSURE_SCORES


def _closure(results: List[Dict]) -> List[str]:
    """The closure scores every result has (none on the curve scenes)."""
    return [m for m in CLOSURE if results and all(m in r for r in results)]


def _by_model(results: List[Dict]) -> Dict[str, List[Dict]]:
    by_model: Dict[str, List[Dict]] = {}
    for r in results:
        by_model.setdefault(r["model"], []).append(r)
    return by_model


def summarize(results: List[Dict]) -> List[Dict]:
    """One row per model, in first-seen order: each metric's mean and standard deviation over
    seeds (``PQ``, ``PQ_sd``, ...; sd is 0 for one seed) and the costs' medians over seeds (a
    run slowed by other work on a shared machine does not move them)."""
    rows = []
    for model, runs in _by_model(results).items():
        row = {"model": model, "seeds": len(runs), "iters": runs[0]["iters"]}
        for m in METRICS:
            values = np.array([r[m] for r in runs], dtype=float)
            row[m], row[m + "_sd"] = values.mean(), values.std(ddof=1) if len(runs) > 1 else 0.0
        for c in COSTS:
            row[c] = float(np.median([r[c] for r in runs]))
        rows.append(row)
    return rows


def paired_tests(
    results: List[Dict], baselines: Dict[str, str], metrics: Sequence[str] = ("PQ", "PQ_th")
) -> List[Dict]:
    """Each model against its baseline, paired by seed.

    Args:
        results: run results with ``model`` (label), ``name`` and ``seed``.
        baselines: entry name -> the name of the entry it is tested against.

    Returns:
        One row per (model, metric): ``model``, ``baseline`` (labels), ``metric``, ``n`` (seeds
        both have), ``diff`` (mean of model - baseline), ``diff_sd`` and ``p`` (two-sided paired
        t-test; NaN for fewer than 2 seeds or a zero spread).
    """
    by_name: Dict[str, Dict[int, Dict]] = {}
    for r in results:
        by_name.setdefault(r.get("name", r["model"]), {})[r["seed"]] = r
    rows = []
    for name, base in baselines.items():
        if not base or name not in by_name or base not in by_name:
            continue
        seeds = sorted(set(by_name[name]) & set(by_name[base]))
        if not seeds:
            continue
        for m in metrics:
            a = np.array([by_name[name][s][m] for s in seeds], dtype=float)
            b = np.array([by_name[base][s][m] for s in seeds], dtype=float)
            d = a - b
            p = float("nan")
            if len(seeds) > 1 and d.std() > 0:
                p = float(stats.ttest_rel(a, b).pvalue)
            rows.append(
                {
                    "model": by_name[name][seeds[0]]["model"],
                    "baseline": by_name[base][seeds[0]]["model"],
                    "metric": m,
                    "n": len(seeds),
                    "diff": float(d.mean()),
                    "diff_sd": float(d.std(ddof=1)) if len(seeds) > 1 else 0.0,
                    "p": p,
                }
            )
    return rows


def step_gains(results: List[Dict], metric: str = "PQ") -> List[Dict]:
    """What running more inference steps buys each recurrent model, paired within each run:
    ``metric`` at t = N (the trained step count) minus t = 1, and at t = 3N minus t = N.

    Returns one row per (model, gain): ``model``, ``gain`` ("N - 1" or "3N - N"), ``n`` (runs
    with both counts in their sweep), ``diff`` (mean), ``diff_sd`` and ``p`` (two-sided
    one-sample t-test of the differences against 0; NaN for fewer than 2 runs or no spread).
    """
    rows = []
    for model, runs in _by_model(results).items():
        for label, pick in (("N - 1", lambda n: (n, 1)), ("3N - N", lambda n: (3 * n, n))):
            d = []
            for r in runs:
                n = r.get("trained_timesteps", 0)
                if not n or not r.get("sweep"):
                    continue
                hi, lo = (str(t) for t in pick(n))
                if hi in r["sweep"] and lo in r["sweep"] and hi != lo and metric in r["sweep"][hi]:
                    d.append(r["sweep"][hi][metric] - r["sweep"][lo][metric])
            if not d:
                continue
            d = np.array(d, dtype=float)
            p = float(stats.ttest_1samp(d, 0.0).pvalue) if len(d) > 1 and d.std() > 0 else np.nan
            sd = float(d.std(ddof=1)) if len(d) > 1 else 0.0
            rows.append(
                {"model": model, "metric": metric, "gain": label, "n": len(d),
                 "diff": float(d.mean()), "diff_sd": sd, "p": p}
            )  # fmt: skip
    return rows


def _plot(results: List[Dict], path: str) -> None:
    plt = pyplot()

    metrics = ["PQ", "PQ_th"] + _closure(results)
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5))
    for model, runs in _by_model(results).items():
        for ax, metric in zip(axes, metrics):
            if not runs[0]["sweep"]:
                mean = np.mean([r[metric] for r in runs])
                ax.axhline(mean, color="gray", ls="--", lw=1, label=model)
                continue
            counts = sorted(int(t) for t in runs[0]["sweep"])
            values = np.array([[r["sweep"][str(t)][metric] for t in counts] for r in runs])
            mean, sd = values.mean(0), values.std(0, ddof=1) if len(runs) > 1 else 0 * values[0]
            line = ax.plot(counts, mean, "-o", ms=3, label=model)[0]
            ax.fill_between(counts, mean - sd, mean + sd, alpha=0.15, color=line.get_color())
            ax.axvline(runs[0]["trained_timesteps"], color=line.get_color(), ls=":", lw=1)
    for ax, metric in zip(axes, metrics):
        ax.set(
            xlabel="inference steps t (dotted: trained N)",
            ylabel=metric,
            xscale="log",
            title=f"{metric}: mean over seeds, band +-1 sd",
        )
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _write_csv(path: str, table: List[Dict]) -> None:
    fields = [k for k in table[0] if k != "sweep"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)


def _sweep_table(results: List[Dict], metric: str) -> List[str]:
    lines = [
        f"{metric} at inference steps t (mean over seeds):",
        "",
        "| model | " + " | ".join(f"t={t}" for t in COUNTS) + " |",
        "|---" * (len(COUNTS) + 1) + "|",
    ]
    for model, runs in _by_model(results).items():
        if not runs[0]["sweep"]:
            continue
        means = [
            np.mean([x["sweep"][str(t)].get(metric, np.nan) for x in runs if str(t) in x["sweep"]])
            for t in COUNTS
        ]
        lines.append(f"| {model} | " + " | ".join(f"{v:.1f}" for v in means) + " |")
    return lines + [""]


def write_comparison(
    results: List[Dict],
    out_dir: str,
    baselines: Optional[Dict[str, str]] = None,
    tested: Sequence[str] = ("PQ", "PQ_th"),
) -> Dict[str, str]:
    """Write comparison.csv (per model), runs.csv (per run), paired_tests.csv (when
    ``baselines`` gives any pair: the ``tested`` metrics every run has, e.g. "PQ/curve"),
    comparison.md and pq_vs_steps.png to ``out_dir``.

    Returns {what: path}.
    """
    os.makedirs(out_dir, exist_ok=True)
    rows = summarize(results)
    files = {k: os.path.join(out_dir, k) for k in ("comparison.csv", "runs.csv")}
    _write_csv(files["comparison.csv"], rows)
    _write_csv(files["runs.csv"], results)
    header = "model | seeds | PQ | PQ_th | PQ_st | params (M) | train peak (MB) | step (s)"
    lines = [f"| {header} | inference (s/img) |", "|---" * 9 + "|"]
    for r in rows:
        pq = " | ".join(f"{r[m]:.1f} ± {r[m + '_sd']:.1f}" for m in ("PQ", "PQ_th", "PQ_st"))
        costs = f"{r['params_M']:.2f} | {r['train_peak_mb']:.0f} | {r['step_s']:.2f}"
        lines.append(f"| {r['model']} | {r['seeds']} | {pq} | {costs} | {r['infer_img_s']:.3f} |")
    lines.append("")
    categories = sorted(
        {k for r in results for k in r if k.startswith("PQ/")},
        key=lambda k: [k for r in results for k in r].index(k),
    )
    if categories:
        lines += [
            "PQ per category (mean ± sd over seeds):",
            "",
            "| model | " + " | ".join(c[3:] for c in categories) + " |",
            "|---" * (len(categories) + 1) + "|",
        ]
        for model, runs in _by_model(results).items():
            cells = []
            for c in categories:
                v = np.array([r[c] for r in runs if c in r], dtype=float)
                sd = v.std(ddof=1) if len(v) > 1 else 0.0
                cells.append(f"{v.mean():.1f} ± {sd:.1f}" if len(v) else "-")
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    closure = _closure(results)
    if closure:
        lines += [
            "Closure on the enclosure scenes (of the tokens and ground inside loops, the share "
            "labelled right, balanced over closed and open loops: 50 = every loop treated alike, "
            "100 = closed told from open; mean ± sd over seeds):",
            "",
            "| model | " + " | ".join(closure) + " | tokens in closed / open loops right |",
            "|---" * (len(closure) + 2) + "|",
        ]
        for model, runs in _by_model(results).items():
            cells = []
            for m in closure + ["tokens_closed_loop/right", "tokens_open_loop/right"]:
                v = np.array([r.get(m, np.nan) for r in runs], dtype=float)
                sd = v.std(ddof=1) if len(v) > 1 else 0.0
                cells.append(f"{v.mean():.1f} ± {sd:.1f}")
            lines.append(
                f"| {model} | " + " | ".join(cells[:-2]) + f" | {cells[-2]} / {cells[-1]} |"
            )
        lines.append("")
    if any(r.get("grouping", {}).get("instances") for r in results):
        lines += [
            "Mask head on crossing same-category instances, from their ground-truth boxes (mean "
            "mask probability on the instance's own pixels, on the other instances' pixels in "
            "its box, and their difference; mean ± sd over seeds):",
            "",
            "| model | own | other | separation |",
            "|---|---|---|---|",
        ]
        for model, runs in _by_model(results).items():
            g = [r["grouping"] for r in runs if r.get("grouping", {}).get("instances")]
            if not g:
                continue
            cells = []
            for key in ("own", "other", "separation"):
                v = np.array([x[key] for x in g], dtype=float)
                sd = v.std(ddof=1) if len(v) > 1 else 0.0
                cells.append(f"{v.mean():.3f} ± {sd:.3f}")
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    tested = [m for m in tested if all(m in r for r in results)]
    tests = paired_tests(results, baselines or {}, tested)
    if tests:
        files["paired_tests.csv"] = os.path.join(out_dir, "paired_tests.csv")
        _write_csv(files["paired_tests.csv"], tests)
        lines += [
            "Paired over seeds (model - baseline; two-sided paired t-test):",
            "",
            "| model | baseline | metric | seeds | difference | p |",
            "|---|---|---|---|---|---|",
        ]
        for t in tests:
            lines.append(
                f"| {t['model']} | {t['baseline']} | {t['metric']} | {t['n']} | "
                f"{t['diff']:+.1f} ± {t['diff_sd']:.1f} | {t['p']:.3f} |"
            )
        lines.append("")
    gains = [g for m in ["PQ"] + _closure(results) for g in step_gains(results, m)]
    if gains:
        files["step_gains.csv"] = os.path.join(out_dir, "step_gains.csv")
        _write_csv(files["step_gains.csv"], gains)
        lines += [
            "What more inference steps buy (the metric at t = N minus t = 1, and at 3N minus N, "
            "within each run; mean ± sd over seeds, two-sided t-test against 0):",
            "",
            "| model | metric | gain | seeds | difference | p |",
            "|---|---|---|---|---|---|",
        ]
        for g in gains:
            lines.append(
                f"| {g['model']} | {g['metric']} | {g['gain']} | {g['n']} | {g['diff']:+.2f} ± "
                f"{g['diff_sd']:.2f} | {g['p']:.3f} |"
            )
        lines.append("")
    for metric in ["PQ", "PQ_th"] + _closure(results):
        lines += _sweep_table(results, metric)
    files["comparison.md"] = os.path.join(out_dir, "comparison.md")
    with open(files["comparison.md"], "w") as f:
        f.write("\n".join(lines))
    files["pq_vs_steps.png"] = os.path.join(out_dir, "pq_vs_steps.png")
    _plot(results, files["pq_vs_steps.png"])
    return files

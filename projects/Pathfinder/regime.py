#!/usr/bin/env python
"""Pathfinder in the paper's regime (``pathfinder.regime``, settings fixed in advance): at equal
memory, BPTT at the N its memory allows against C-RBP at about 4x the minimum steps on the hard
set; and models trained on the medium set evaluated, without retraining, on the easy, medium and
hard sets at 5-120 steps and with per-sample halting.

Each run is one result file under --results (a rerun skips it: the command resumes), and its
final weights are kept under --keep (tens of kB each, committed) so that the zero-shot
evaluation can be made again and extended without retraining. A run cut off by the end of a
session resumes from its checkpoint under --output, or, on another machine, from the copy that
--save-partial leaves under --keep (commit it). Then writes, under --results:
geometry.md, summary.md/.csv, paired_tests.csv, zero_shot.csv/.md, report.md and the pictures.

  python projects/Pathfinder/regime.py                          # everything missing, then report
  python projects/Pathfinder/regime.py --parts equal_memory --seeds 0
  python projects/Pathfinder/regime.py --report-only            # tables from the files so far
  python projects/Pathfinder/regime.py --status                 # what is done, partial, missing
"""
import argparse
import os
import sys

import torch
from compare import make_set
from compare import parse_args as compare_args
from pathfinder.compare import (
    BASE,
    kept_path,
    plot_comparison,
    run_comparison,
    save_partial,
    summarize,
)
from pathfinder.regime import (
    EQUAL_MEMORY,
    ZERO_SHOT,
    geometry_rows,
    plan_status,
    zero_shot_path,
    zero_shot_rows,
)
from pathfinder.regime_report import (
    markdown_table,
    paired_rows,
    plot_zero_shot,
    read_zero_shot,
    write_markdown,
    zero_shot_table,
)
from pathfinder.report import plot_set_cue_reach, plot_set_unfolding

from rpanoptic.utils import write_result_csv

PROJECT = os.path.dirname(os.path.abspath(__file__))
PARTS = {p.name: p for p in (EQUAL_MEMORY, ZERO_SHOT)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--parts", default=",".join(PARTS), help=f"of: {', '.join(PARTS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--models", default="", help="only these models (default: each part's)")
    p.add_argument("--results", default=os.path.join(PROJECT, "results", "regime"))
    p.add_argument("--keep", default=os.path.join(PROJECT, "checkpoints", "regime"))
    p.add_argument("--output", default="output/pathfinder_compare", help="resumable checkpoints")
    p.add_argument("--data-root", default=compare_args([]).data_root)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--report-only", action="store_true")
    p.add_argument(
        "--status",
        action="store_true",
        help="print each planned run's state (trained, iteration reached, evaluated) and the "
        "core-minutes left by the pilot's step costs; runs nothing",
    )
    p.add_argument("--no-report", action="store_true", help="train and evaluate only")
    p.add_argument(
        "--save-partial",
        action="store_true",
        help="only copy unfinished runs' checkpoints next to the kept weights (commit them: the "
        "next session resumes from them)",
    )
    return p.parse_args(argv)


def _set_root(args, difficulty: str, generate: bool = True) -> str:
    return make_set(compare_args(["--data-root", args.data_root]), difficulty, generate)


def train(args, parts, seeds, only):
    """Seed by seed, every model of each part whose result file is missing."""
    for seed in seeds:
        for part in parts:
            for set_name in part.sets:
                sets = {set_name: _set_root(args, set_name)}
                for model in [m for m in part.models if not only or m in only]:
                    run_comparison(
                        sets, BASE, args.results, args.output, [model], [seed],
                        device=args.device, keep=args.keep,
                    )  # fmt: skip


def evaluate_zero_shot(args, seeds, only):
    """The zero-shot rows of every kept model of :data:`ZERO_SHOT` whose file is missing."""
    roots = {d: _set_root(args, d) for d in ("easy", "medium", "hard")}
    for seed in seeds:
        for model in [m for m in ZERO_SHOT.models if not only or m in only]:
            target = zero_shot_path(args.results, model, seed)
            checkpoint = kept_path(args.keep, ZERO_SHOT.sets[0], model, seed)
            if os.path.isfile(target) or not os.path.isfile(checkpoint):
                continue
            print(f"zero-shot: {model} seed {seed}", flush=True)
            write_result_csv(target, zero_shot_rows(model, seed, checkpoint, roots), args.device)


def report(args):
    files = []
    geometry = geometry_rows(32, 3)
    summary = summarize(args.results)
    files += plot_comparison(args.results)
    for part in PARTS.values():
        for set_name in part.sets:
            root = _set_root(args, set_name, generate=False)
            out = os.path.join(args.results, set_name)
            checkpoints = os.path.join(args.output, set_name)
            for plot, name in (
                (plot_set_cue_reach, "cue_reach"),
                (plot_set_unfolding, "unfolding"),
            ):
                drawn = plot(BASE, args.results, set_name, root, checkpoints,
                             os.path.join(out, f"{name}.png"))  # fmt: skip
                files += [drawn] if drawn else []
    pairs = paired_rows(args.results)
    if pairs and any(r["seeds"] for r in pairs):
        path = os.path.join(args.results, "paired_tests.csv")
        write_result_csv(path, pairs)
        files.append(path)
    zero_rows = read_zero_shot(os.path.join(args.results, "zero_shot"))
    table = zero_shot_table(zero_rows)
    if zero_rows:
        files.append(plot_zero_shot(zero_rows, os.path.join(args.results, "zero_shot.png")))
    sections = {
        "Geometry (32 px, 3 paths per image)": markdown_table(geometry),
        "Runs (accuracy and path IoU at N, 2N, 3N and the last count; memory kept for backward)": (
            markdown_table(summary)
        ),
        "Paired differences on the hard set (A - B over the seeds both have)": markdown_table(
            pairs
        ),
        "Zero-shot: trained on medium, evaluated on each set": markdown_table(table),
    }
    files.append(write_markdown(os.path.join(args.results, "report.md"), sections))
    for f in files:
        print(f"wrote {f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(names) - set(PARTS))
    if unknown:
        print(f"error: unknown parts {unknown}; known: {list(PARTS)}", file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",") if s]
    only = {m for m in args.models.split(",") if m}
    if args.status:
        pilot = os.path.join(args.results, "pilot_step_cost.csv")
        rows = plan_status(args.results, args.keep, args.output, [PARTS[n] for n in names],
                           seeds, pilot)  # fmt: skip
        print(markdown_table(rows))
        left = [r for r in rows if not r["trained"] or r["evaluated"] is False]
        minutes = sum(r["core_min_left"] or 0.0 for r in rows)
        print(f"\n{len(rows) - len(left)} of {len(rows)} runs done; about {minutes:.0f} "
              "core-minutes of training left (pilot step costs, one thread)")  # fmt: skip
        return 0
    if args.save_partial:
        for part in [PARTS[n] for n in names]:
            for path in save_partial(args.output, args.keep, part.sets, part.models, seeds):
                print(f"wrote {path}")
        return 0
    try:
        if not args.report_only:
            train(args, [PARTS[n] for n in names], seeds, only)
            if "zero_shot" in names:
                evaluate_zero_shot(args, seeds, only)
        if not args.no_report:
            report(args)
    except (FileNotFoundError, ValueError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

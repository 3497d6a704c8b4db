#!/usr/bin/env python
"""The Pathfinder comparison (`make pathfinder`): feed-forward baselines (ff, ff_large) and the
hGRU trained with BPTT, RBP and C-RBP, on the same sets with the same settings, one result file
per (set, model, seed) under --results (skipped when already there: rerun to resume), then
summary.csv / summary.md, memory_vs_steps.csv/png, accuracy_vs_set.png and, per set in
<set>/, accuracy_vs_steps.png, fixed_point.csv and unfolding.png.

  python projects/Pathfinder/compare.py                       # easy, 32 px, 3 seeds (hours)
  python projects/Pathfinder/compare.py --sets easy,medium --models ff,hgru_crbp
  python projects/Pathfinder/compare.py --report-only          # tables and pictures only
  python projects/Pathfinder/compare.py --sets hard --device cuda --workers 16   # on a GPU
"""

import argparse
import os
import sys
from dataclasses import replace

import torch
from pathfinder import DIFFICULTY, PathfinderSpec, generate_pathfinder
from pathfinder.compare import (  # noqa: F401  (BASE: also for solvers.py and the tests)
    BASE,
    DEFAULT_MODELS,
    MODELS,
    memory_vs_steps,
    plot_comparison,
    run_comparison,
    summarize,
)
from pathfinder.fixed_point import fixed_point_table
from pathfinder.report import plot_set_cue_reach, plot_set_unfolding, recorded

PROJECT = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(PROJECT))  # the repository (datasets/)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sets", default="easy", help="difficulties, comma-separated")
    p.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help=f"comma-separated, of: {', '.join(MODELS)}",
    )
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--size", type=int, default=32, help="image side (px)")
    p.add_argument("--snakes", type=int, default=3, help="paths per image")
    p.add_argument("--train", type=int, default=40000, help="training images per set")
    p.add_argument("--val", type=int, default=1000)
    p.add_argument("--task", default=BASE.task, choices=["trace", "label"])
    p.add_argument("--iters", type=int, default=BASE.iters)
    p.add_argument("--data-root", default=os.path.join(ROOT, "datasets", "pathfinder"))
    p.add_argument("--results", default=os.path.join(PROJECT, "results", "compare"))
    p.add_argument("--output", default="output/pathfinder_compare", help="checkpoints")
    p.add_argument(
        "--keep",
        default="",
        help="also write each finished run's weights to KEEP/<set>/<model>_s<seed>.pth",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="where the runs train: cpu, cuda, cuda:<i>")
    p.add_argument("--workers", type=int, default=1, help="processes drawing a missing set")
    p.add_argument("--report-only", action="store_true")
    p.add_argument(
        "--no-report",
        action="store_true",
        help="train only (for several processes sharing one results folder; report after)",
    )
    return p.parse_args(argv)


def make_set(args, difficulty: str, generate: bool = True) -> str:
    spec = PathfinderSpec.scaled(args.size, difficulty, args.snakes)
    name = f"{difficulty}_{args.size}px_{args.snakes}paths_{args.train // 1000}k"
    root = os.path.join(args.data_root, name)
    if generate:
        counts = {"train": args.train, "val": args.val}
        generate_pathfinder(root, counts, spec, seed=1, progress=True, workers=args.workers)
    return root


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [s for s in args.sets.split(",") if s]
    bad = sorted(set(names) - set(DIFFICULTY))
    if bad:
        print(f"error: unknown sets {bad}; known: {sorted(DIFFICULTY)}", file=sys.stderr)
        return 2
    base = replace(BASE, task=args.task, iters=args.iters)
    try:
        if not args.report_only:
            sets = {name: make_set(args, name) for name in names}
            models = [m for m in args.models.split(",") if m]
            seeds = [int(s) for s in args.seeds.split(",") if s]
            run_comparison(
                sets,
                base,
                args.results,
                args.output,
                models,
                seeds,
                device=args.device,
                keep=args.keep or None,
            )
            if args.no_report:
                return 0
        rows = summarize(args.results)
    except (FileNotFoundError, ValueError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for row in rows:
        print("  ".join(f"{k}={v}" for k, v in row.items()))
    files = plot_comparison(args.results, names)
    for i, name in enumerate(names):
        root = make_set(args, name, generate=False)
        if not os.path.isfile(os.path.join(root, "generator.json")):
            print(f"no set at {root}: no memory, fixed-point or unfolding report for {name}")
            continue
        if i == 0:  # memory and time do not depend on the set
            for row in memory_vs_steps(base, root, args.results):
                print(f"memory: {row['grad']} N={row['N']}: {row['saved_mb']:.2f} MB kept, "
                      f"{row['step_ms']:.0f} ms per step")  # fmt: skip
            files.append(os.path.join(args.results, "memory_vs_steps.png"))
        out = os.path.join(args.results, name)
        os.makedirs(out, exist_ok=True)
        checkpoints = os.path.join(args.output, name)
        found = recorded(args.results, name, "fixed_point")
        for row in fixed_point_table(
            base, MODELS, root, checkpoints, out, (0, 1, 2), recorded=found
        ):
            print(f"fixed point ({name}): " + "  ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            ))  # fmt: skip
        drawn = plot_set_unfolding(
            base, args.results, name, root, checkpoints, os.path.join(out, "unfolding.png")
        )
        files += [drawn] if drawn else []
        drawn = plot_set_cue_reach(
            base, args.results, name, root, checkpoints, os.path.join(out, "cue_reach.png")
        )
        files += [drawn] if drawn else []
    for f in files:
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""The backward-solver benchmark (``tools/benchmark.py solvers``) on a trained Pathfinder hGRU:
its cell and its drive (the stem's output on the first B validation images of ``--set``) at its
trained N, the state where a C-RBP training step meets the solver once the penalty has done its
work. The options are the benchmark's, plus the four below.

  python projects/Pathfinder/solvers.py --pathfinder hgru_crbp_power_n20:0 --shape 16 --repeats 5
"""
import os
import sys
from dataclasses import replace

import torch
from compare import BASE, make_set
from compare import parse_args as compare_args
from pathfinder.compare import MODELS
from pathfinder.data import load_split
from pathfinder.fixed_point import load_trained

from rpanoptic.benchmark import solvers


def trained_pathfinder(args):
    """The trained hGRU cell of ``--pathfinder`` and its drive on validation images; sets
    ``args.timesteps`` to the model's N."""
    name, _, seed = args.pathfinder.partition(":")
    if name not in MODELS or not seed.isdigit():
        raise SystemExit(
            f"--pathfinder {args.pathfinder!r}: give MODEL:SEED, MODEL one of {list(MODELS)}"
        )
    run = replace(BASE, **MODELS[name], seed=int(seed))
    # The set's folder as the comparison names it, from its own defaults (size, paths, images).
    root = make_set(compare_args(["--data-root", args.data_root]), args.set, generate=False)
    checkpoint = os.path.join(args.checkpoints, args.set, f"{name}_s{seed}", "checkpoint.pth")
    if not os.path.isfile(checkpoint):
        raise SystemExit(
            f"--pathfinder {args.pathfinder}: no checkpoint {checkpoint}; train it with "
            f"projects/Pathfinder/compare.py --sets {args.set} --models {name} --seeds {seed}"
        )
    model = load_trained(run, checkpoint, finished=True)
    images = int(args.shape.split(",")[0])
    val = load_split(root, "val", run.task).take(slice(0, images))
    with torch.no_grad():
        x = model.stem(val.x)
    args.timesteps, args.shape = run.timesteps, ",".join(str(d) for d in x.shape)
    return model.recurrence.cell.to(args.device), x.to(args.device)


def main(argv=None) -> int:
    p = solvers.build_parser()
    p.description = __doc__
    p.add_argument("--pathfinder", required=True, help="MODEL:SEED, a trained Pathfinder hGRU")
    p.add_argument("--set", default="medium", help="its set")
    p.add_argument("--checkpoints", default="output/pathfinder_compare")
    p.add_argument("--data-root", default=compare_args([]).data_root)
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cell, x = trained_pathfinder(args)
    return solvers.run(args, cell, x)


if __name__ == "__main__":
    sys.exit(main())

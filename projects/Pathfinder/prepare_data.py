#!/usr/bin/env python
"""Make a Pathfinder set (the C-RBP paper's contour-tracing task) as PNG images and a labels CSV
per split: are the two dots at the ends of one dashed path? Deterministic for a seed; rerunning
with the same flags writes nothing. Each label is checked by following the rendered path.

  python projects/Pathfinder/prepare_data.py                              # easy (6 dashes), 64 px
  python projects/Pathfinder/prepare_data.py --difficulty hard --size 96 --train 10000
"""
import argparse
import os
import sys

from pathfinder import DIFFICULTY, PathfinderSpec, generate_pathfinder

PROJECT = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(PROJECT))  # the repository (datasets/)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--root",
        default=os.path.join(ROOT, "datasets", "pathfinder"),
        help="parent folder of the set",
    )
    p.add_argument("--difficulty", default="easy", choices=sorted(DIFFICULTY))
    p.add_argument("--size", type=int, default=PathfinderSpec.size, help="image side (px)")
    p.add_argument("--snakes", type=int, default=PathfinderSpec.snakes, help="paths per image")
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--val", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes drawing the images")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    spec = PathfinderSpec.scaled(args.size, args.difficulty, args.snakes)
    folder = os.path.join(args.root, f"{args.difficulty}_{args.size}px_seed{args.seed}")
    try:
        _, written = generate_pathfinder(
            folder,
            {"train": args.train, "val": args.val},
            spec,
            args.seed,
            progress=True,
            workers=args.workers,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"pathfinder set {'written' if written else 'already there, kept'}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

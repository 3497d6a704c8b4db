#!/usr/bin/env python
"""Make a synthetic panoptic dataset (COCO panoptic format) that the demo and tests train on.

--kind curves (the default): textured stuff regions with long, thin, same-coloured crossing
curves and overlapping compact shapes (rpanoptic/data/synthetic_scene.py), written to
<root>/synthetic_panoptic/. --kind enclosure: tokens and ground inside or outside thin loops that
are closed or have a gap far away (rpanoptic/data/enclosure_scene.py), written to
<root>/synthetic_enclosure/. <root> is $RPANOPTIC_DATASETS, else $DETECTRON2_DATASETS, else
./datasets. Deterministic for a seed; rerunning with the same flags writes nothing.

  python datasets/prepare_synthetic_panoptic.py
  python datasets/prepare_synthetic_panoptic.py --kind enclosure
  python datasets/prepare_synthetic_panoptic.py --train 1000 --val 100 --size 320 --seed 1
"""
import argparse
import os
import sys

from rpanoptic.data import KINDS, SceneSpec, generate_synthetic_panoptic
from rpanoptic.data.synthetic import datasets_root


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", default="curves", choices=sorted(KINDS), help="which scenes")
    p.add_argument("--root", default=None, help="datasets root (default: see above)")
    p.add_argument("--train", type=int, default=400, help="training images")
    p.add_argument("--val", type=int, default=50, help="validation images")
    p.add_argument("--size", type=int, default=SceneSpec.size, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--overwrite", action="store_true", help="write even if already there")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    kind = KINDS[args.kind]
    folder = os.path.join(args.root or datasets_root(), kind.folder)
    try:
        written = generate_synthetic_panoptic(
            folder,
            {"train": args.train, "val": args.val},
            seed=args.seed,
            spec=kind.spec(size=args.size),
            workers=args.workers,
            overwrite=args.overwrite,
            progress=True,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    what = "wrote" if written else "already there (same seed, counts and size), kept"
    print(f"synthetic {args.kind} dataset {what}: {os.path.abspath(folder)}")
    print(f"  train {args.train} images, val {args.val} images, {args.size} px, seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

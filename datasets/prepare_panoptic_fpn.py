#!/usr/bin/env python
"""Make the stuff semantic PNGs Panoptic FPN trains on, from COCO-panoptic PNGs and JSON.

Pixel values: things -> 0, stuff -> 1..N (stuff categories in id order), unlabeled -> 255,
as detectron2's own datasets/prepare_panoptic_fpn.py writes them.

  python datasets/prepare_panoptic_fpn.py        # COCO under $DETECTRON2_DATASETS (./datasets)
  python datasets/prepare_panoptic_fpn.py --panoptic-json J --panoptic-root P --output-root O

Rerunning keeps the PNGs already written (pass --overwrite to rewrite them).
"""
import argparse
import multiprocessing as mp
import os
import sys

from rpanoptic.data import separate_semantic_from_panoptic

SPLITS = ("val2017", "train2017")


def coco_jobs(splits):
    """(panoptic_json, panoptic_root, output_root) of each COCO split."""
    coco = os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "coco")
    return [
        (
            os.path.join(coco, "annotations", f"panoptic_{s}.json"),
            os.path.join(coco, f"panoptic_{s}"),
            os.path.join(coco, f"panoptic_stuff_{s}"),
        )
        for s in splits
    ]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--panoptic-json", help="panoptic JSON of another dataset")
    parser.add_argument("--panoptic-root", help="folder of its panoptic PNGs")
    parser.add_argument("--output-root", help="folder to write its stuff PNGs to")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), help="COCO splits")
    parser.add_argument("--workers", type=int, default=min(8, mp.cpu_count()))
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing PNGs")
    args = parser.parse_args(argv)
    explicit = [args.panoptic_json, args.panoptic_root, args.output_root]
    if any(explicit) and not all(explicit):
        parser.error("give all of --panoptic-json, --panoptic-root and --output-root, or none")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.panoptic_json:
        jobs = [(args.panoptic_json, args.panoptic_root, args.output_root)]
    else:
        jobs = coco_jobs(args.splits)
    for panoptic_json, panoptic_root, output_root in jobs:
        try:
            counts = separate_semantic_from_panoptic(
                panoptic_json,
                panoptic_root,
                output_root,
                workers=args.workers,
                overwrite=args.overwrite,
                progress=True,
            )
        except ValueError as e:
            print(f"prepare_panoptic_fpn: {e}", file=sys.stderr)
            return 1
        print(
            f"{output_root}: wrote {counts['written']} stuff PNGs, "
            f"kept {counts['skipped']} already there"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

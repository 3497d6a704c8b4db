#!/usr/bin/env python
"""The demo: make the synthetic enclosure dataset if missing (tokens enclosed or free, ground
inside or outside closed loops: answers that need the whole loop), train a small C-RBP recurrent
Panoptic FPN on it, evaluate PQ and the closure scores on val, sweep the inference steps past
the trained N, and write pictures and report.md to the output folder.

  python tools/demo.py                                   # what `make demo` runs
  python tools/demo.py --kind curves                     # the curve scenes (`make demo-curves`)
  python tools/demo.py --iters 200 --output-dir output/demo_short --device cpu
  python tools/demo.py --config-file configs/Synthetic/Enclosure/panoptic_fpn_R_18.yaml MODEL.X Y
"""
import argparse
import os
import sys

from detectron2.utils.logger import setup_logger

import rpanoptic  # noqa: F401  (registers rpanoptic's components and the synthetic datasets)
from rpanoptic.data import KINDS, ensure_synthetic_dataset
from rpanoptic.data.synthetic_scene import parse_scene
from rpanoptic.engine.demo import demo_config, run_demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {  # the demo's model on each kind of scene
    "enclosure": "configs/Synthetic/Enclosure/panoptic_rfpn_R_18_crbp.yaml",
    "curves": "configs/Synthetic/panoptic_rfpn_R_18_crbp.yaml",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kind", default="enclosure", choices=sorted(KINDS), help="which scenes")
    p.add_argument("--config-file", default="", help="default: the kind's RFPN C-RBP config")
    p.add_argument("--output-dir", default="", help="default: output/demo (output/demo_curves)")
    p.add_argument("--iters", type=int, default=0, help="training iterations (default: config)")
    p.add_argument("--device", default="", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--train", type=int, default=400, help="synthetic training images")
    p.add_argument("--val", type=int, default=50, help="synthetic validation images")
    p.add_argument("--size", type=int, default=160, help="synthetic image size (px)")
    p.add_argument("--scene", default="", help="scene fields, e.g. gap=14:20 (another folder)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="detectron2")
    setup_logger(name="rpanoptic")
    config = args.config_file or os.path.join(ROOT, CONFIGS[args.kind])
    output = args.output_dir or (
        "output/demo" if args.kind == "enclosure" else "output/demo_curves"
    )
    try:
        spec = parse_scene(args.scene, args.size, KINDS[args.kind].spec)
        ensure_synthetic_dataset({"train": args.train, "val": args.val}, args.seed, spec=spec)
    except ValueError as e:  # e.g. a dataset made with another recipe: left as it is
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = demo_config(config, output, args.iters, args.device, args.opts)
    files = run_demo(cfg)
    print(f"\nDemo results in {os.path.abspath(cfg.OUTPUT_DIR)}:")
    for what, path in files.items():
        print(f"  {what:28s} {os.path.relpath(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

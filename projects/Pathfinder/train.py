#!/usr/bin/env python
"""Train one Pathfinder model (hGRU in one of the four learning modes, or a feed-forward
baseline) on a set made by projects/Pathfinder/prepare_data.py, then evaluate it: accuracy at the
inference step counts (default 1, N/2, N, 2N, 3N, 40), the drift ||h_T - h_N|| / ||h_N||, the
spectral radius at h_N, memory kept for backward and step time. Writes
<output-dir>/result.json; resumes from <output-dir>/checkpoint.pth.

  python projects/Pathfinder/prepare_data.py --difficulty easy
  python projects/Pathfinder/train.py --data datasets/pathfinder/easy_64px_seed0 --grad crbp
  python projects/Pathfinder/train.py --data ... --model ff --blocks 8
"""
import argparse
import json
import os
import sys
from dataclasses import fields

import torch
from pathfinder.train import PathfinderRun, run_and_report


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="a folder made by prepare_data.py")
    p.add_argument("--output-dir", default="", help="default: output/pathfinder/<settings>")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<index>")
    for f in fields(PathfinderRun):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "eval_steps":
            p.add_argument(flag, default="", help="comma-separated inference step counts")
        else:
            p.add_argument(flag, type=type(f.default), default=f.default)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    values = {f.name: getattr(args, f.name) for f in fields(PathfinderRun)}
    values["eval_steps"] = [int(t) for t in args.eval_steps.split(",")] if args.eval_steps else []
    run = PathfinderRun(**values)
    name = f"{run.model}_{run.grad if run.model == 'hgru' else 'ff'}_N{run.timesteps}_s{run.seed}"
    out = args.output_dir or os.path.join("output", "pathfinder", os.path.basename(args.data), name)
    try:
        result = run_and_report(run, args.data, out, device=args.device)
    except (FileNotFoundError, ValueError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = {k: result[k] for k in ("params", "accuracy", "saved_mb", "step_ms") if k in result}
    summary.update({k: result[k] for k in ("drift", "spectral_radius") if k in result})
    print(json.dumps(summary, indent=2))
    print(f"result: {out}/result.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

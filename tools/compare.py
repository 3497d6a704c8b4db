#!/usr/bin/env python
"""Compare models on the synthetic dataset with one schedule and several seeds (`make compare`).

The default plan (rpanoptic.engine.compare.DEFAULT_PLAN): feed-forward; RFPN with BPTT (N=3),
RBP (N=10, no penalty) and C-RBP (N=10); the recurrent mask head with C-RBP; and the fine-tuning
path (feed-forward for half the schedule, then half as RFPN C-RBP with a zero-initialised scale,
against the same feed-forward model trained on for that half). Each run is a fresh process and
writes one JSON file to --results-dir/<model>/seed<k>.json; runs whose file exists are skipped,
so rerunning resumes (commit the results folder to resume on another machine). Then writes
comparison.md/.csv, paired_tests.csv, runs.csv and pq_vs_steps.png to --results-dir.

  python tools/compare.py                                  # default plan x 3 seeds
  python tools/compare.py --jobs 2 --seeds 0,1,2,3,4       # two runs at a time, 1 thread each
  python tools/compare.py --configs configs/Synthetic/panoptic_fpn_R_18.yaml,... [KEY VALUE ...]
"""
import argparse
import os
import subprocess
import sys
from dataclasses import replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", default="", help="comma-separated configs (default: the plan)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--iters", type=int, default=0, help="training iterations (default: config)")
    p.add_argument("--device", default="", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (threads split evenly)")
    p.add_argument("--results-dir", default="results/compare", help="result files and tables")
    p.add_argument("--output-dir", default="output/compare", help="checkpoints and logs")
    p.add_argument("--train", type=int, default=400, help="synthetic training images")
    p.add_argument("--val", type=int, default=50, help="synthetic validation images")
    p.add_argument("--size", type=int, default=0, help="synthetic image size (px; 0: default)")
    # One run, in a child process (what the driver launches).
    p.add_argument("--one", default="", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--result", default="", help=argparse.SUPPRESS)
    p.add_argument("--fraction", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--init-weights", default="", help=argparse.SUPPRESS)
    p.add_argument("--name", default="", help=argparse.SUPPRESS)
    p.add_argument("--label", default="", help=argparse.SUPPRESS)
    p.add_argument(
        "--grouping-category",
        default="curve",
        help="thing class whose crossing instances the mask head must tell apart ('' to skip)",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every config")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import rpanoptic  # noqa: F401  (registers rpanoptic's components and the synthetic datasets)
    from rpanoptic.data import SceneSpec
    from rpanoptic.engine import compare
    from rpanoptic.engine.demo import ensure_synthetic_dataset

    args.size = args.size or SceneSpec.size
    ensure_synthetic_dataset({"train": args.train, "val": args.val}, size=args.size)
    if args.one:  # a child process: one config, one seed
        compare.run_one(
            args.one,
            args.seed,
            args.output_dir,  # the run's own folder
            args.result,
            args.iters,
            args.device,
            args.opts,
            fraction=args.fraction,
            init_weights=args.init_weights,
            name=args.name,
            label=args.label,
            grouping_category=args.grouping_category,
        )
        return 0
    if args.configs:
        configs = [os.path.join(ROOT, c) for c in args.configs.split(",")]
        plan = compare.plan_from_configs(configs)
    else:
        plan = [replace(e, config=os.path.join(ROOT, e.config)) for e in compare.DEFAULT_PLAN]
    seeds = [int(s) for s in args.seeds.split(",")]
    results_dir, output_dir = os.path.abspath(args.results_dir), os.path.abspath(args.output_dir)

    def launch(entry, seed, folder, result, init, threads):
        cmd = [sys.executable, os.path.abspath(__file__), "--one", entry.config]
        cmd += ["--seed", str(seed), "--result", result, "--fraction", str(entry.fraction)]
        cmd += ["--init-weights", init, "--name", entry.name, "--label", entry.label]
        cmd += ["--grouping-category", args.grouping_category]
        cmd += ["--iters", str(args.iters), "--device", args.device, "--output-dir", folder]
        cmd += ["--train", str(args.train), "--val", str(args.val), "--size", str(args.size)]
        cmd += [*entry.opts, *args.opts]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        with open(os.path.join(folder, "log.txt"), "w") as log:
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)

    try:
        results = compare.run_plan(
            plan, seeds, results_dir, output_dir, launch, jobs=args.jobs, log=_print
        )
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for r in results:
        print(
            f"  {r['model']} seed {r['seed']}: PQ {r['PQ']:.1f} (things {r['PQ_th']:.1f}, "
            f"stuff {r['PQ_st']:.1f}), {r['train_s'] / 60:.1f} min"
        )
    baselines = {e.name: e.baseline for e in plan}
    # The curves are what needs long-range grouping in the synthetic scenes.
    tested = ("PQ", "PQ_th", "PQ/curve")
    files = compare.write_comparison(results, results_dir, baselines, tested)
    print(open(files["comparison.md"]).read())
    print("Written:", ", ".join(files.values()))
    return 0


def _print(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())

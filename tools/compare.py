#!/usr/bin/env python
"""Compare models on the synthetic dataset with one schedule and several seeds (`make compare`).

Trains each config once per seed, each run in a fresh process (so that its peak memory is its
own), then writes comparison.md/.csv (PQ, PQ_th, PQ_st as mean ± sd over seeds; parameters,
training peak memory, step and inference time), runs.csv and pq_vs_steps.png to --output-dir.
Runs already done (their result.json exists) are kept: rerun the command to resume.

  python tools/compare.py                                  # 4 models x 3 seeds, config schedule
  python tools/compare.py --seeds 0,1,2,3,4 --iters 1000
  python tools/compare.py --configs configs/Synthetic/panoptic_fpn_R_18.yaml,... [KEY VALUE ...]
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = [
    f"configs/Synthetic/{name}.yaml"
    for name in (
        "panoptic_fpn_R_18",
        "panoptic_rfpn_R_18_bptt",
        "panoptic_rfpn_R_18_crbp",
        "panoptic_rmask_R_18_crbp",
    )
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated config files")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--iters", type=int, default=0, help="training iterations (default: config)")
    p.add_argument("--device", default="", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--output-dir", default="output/compare")
    p.add_argument("--train", type=int, default=400, help="synthetic training images")
    p.add_argument("--val", type=int, default=50, help="synthetic validation images")
    p.add_argument("--size", type=int, default=256, help="synthetic image size (px)")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: run one config
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every config")
    return p.parse_args(argv)


def run_folder(args, config, seed):
    name = os.path.splitext(os.path.basename(config))[0]
    return os.path.join(args.output_dir, name, f"seed{seed}")


def main(argv=None):
    args = parse_args(argv)
    import rpanoptic  # noqa: F401  (registers rpanoptic's components and the synthetic datasets)
    from rpanoptic.engine.compare import run_one, write_comparison
    from rpanoptic.engine.demo import ensure_synthetic_dataset

    ensure_synthetic_dataset({"train": args.train, "val": args.val}, size=args.size)
    args.output_dir = os.path.abspath(args.output_dir)
    if args.one:  # a child process: one config, one seed
        run_one(
            args.one,
            args.seed,
            run_folder(args, args.one, args.seed),
            args.iters,
            args.device,
            args.opts,
        )
        return 0
    configs = [os.path.join(ROOT, c) for c in args.configs.split(",")]
    # Seed by seed, so that a comparison stopped early still has every model for some seeds.
    jobs = [(c, int(s)) for s in args.seeds.split(",") for c in configs]
    results, start = [], time.time()
    for k, (config, seed) in enumerate(jobs):
        folder = run_folder(args, config, seed)
        result = os.path.join(folder, "result.json")
        if not os.path.isfile(result):
            elapsed = time.time() - start
            print(
                f"[{k + 1}/{len(jobs)}] {config} seed {seed} -> {folder}  "
                f"({elapsed / 60:.0f} min so far)",
                flush=True,
            )
            os.makedirs(folder, exist_ok=True)
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--one",
                config,
                "--seed",
                str(seed),
                "--iters",
                str(args.iters),
                "--device",
                args.device,
                "--train",
                str(args.train),
                "--val",
                str(args.val),
                "--size",
                str(args.size),
                "--output-dir",
                args.output_dir,
                *args.opts,
            ]
            with open(os.path.join(folder, "log.txt"), "w") as log:
                done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            if done.returncode != 0:
                print(f"  failed (exit {done.returncode}): see {folder}/log.txt", file=sys.stderr)
                return 1
        with open(result) as f:
            results.append(json.load(f))
        r = results[-1]
        print(
            f"  {r['model']} seed {seed}: PQ {r['PQ']:.1f} (things {r['PQ_th']:.1f}, "
            f"stuff {r['PQ_st']:.1f}), {r['train_s'] / 60:.1f} min",
            flush=True,
        )
    files = write_comparison(results, args.output_dir)
    print(open(files["comparison.md"]).read())
    print("Written:", ", ".join(files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

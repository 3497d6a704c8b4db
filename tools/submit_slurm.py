#!/usr/bin/env python
"""Submit tools/train_net.py to SLURM with submitit: --nodes x --gpus-per-node processes.

Everything after "--" is train_net's command line. A preempted or timed-out job is requeued
with --resume and continues from its last checkpoint.

  python tools/submit_slurm.py --nodes 2 --gpus-per-node 8 --partition gpu -- \\
      --config-file configs/COCO-PanopticSegmentation/panoptic_rfpn_R_50_crbp20_1x.yaml \\
      OUTPUT_DIR output/rfpn_crbp20
  python tools/submit_slurm.py --cluster local --gpus-per-node 1 -- --config-file ...   # here
"""
import argparse
import sys

import rpanoptic  # noqa: F401  (registers rpanoptic's components)
from rpanoptic.engine.slurm import make_executor, submit


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8, help="processes per node")
    p.add_argument("--cpus-per-task", type=int, default=10, help="CPUs per node")
    p.add_argument("--mem-gb", type=int, default=0, help="memory per node (0: SLURM's default)")
    p.add_argument("--timeout", type=int, default=4320, help="minutes before requeue")
    p.add_argument("--partition", default="")
    p.add_argument("--account", default="")
    p.add_argument("--name", default="rpanoptic")
    p.add_argument("--job-dir", default="output/slurm/%j", help="submitit's logs and pickles")
    p.add_argument(
        "--cluster", default=None, help="slurm (default when sbatch exists), local, debug"
    )
    p.add_argument("--wait", action="store_true", help="wait for the job and print its result")
    p.add_argument("train_argv", nargs=argparse.REMAINDER, help="-- then train_net's arguments")
    args = p.parse_args(argv)
    if args.train_argv[:1] == ["--"]:
        args.train_argv = args.train_argv[1:]
    if not args.train_argv:
        p.error("give train_net's arguments after --, e.g. -- --config-file configs/<name>.yaml")
    return args


def main(argv=None):
    args = parse_args(argv)
    executor = make_executor(
        args.job_dir,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_task,
        mem_gb=args.mem_gb,
        timeout_min=args.timeout,
        partition=args.partition,
        name=args.name,
        cluster=args.cluster,
        slurm_args={"account": args.account} if args.account else None,
    )
    job = submit(executor, args.train_argv, args.gpus_per_node)
    print(f"Submitted job {job.job_id}; logs in {job.paths.folder}")
    if args.wait:
        job.result()
        print(f"Job {job.job_id} finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The command line of ``tools/train_net.py`` (Detectron2's usual flags) and the function each
process runs; in the package so that process launchers (``launch``, submitit jobs) can import it.
"""

import argparse
import os
from typing import List, Optional

from detectron2.engine import default_argument_parser, launch

from ..evaluation import parse_counts, timestep_sweep
from .checkpoint import UNSAFE_PICKLE_ENV, load_weights
from .setup import setup
from .trainer import Trainer

__all__ = ["launch_main", "main", "parse_args"]


def main(args: argparse.Namespace):
    """Train (``--resume``: continue the last checkpoint) or, with ``--eval-only``, evaluate."""
    if getattr(args, "unsafe_allow_pickle", False):
        os.environ[UNSAFE_PICKLE_ENV] = "1"  # read by the checkpointer, in every process
    cfg = setup(args)
    if args.eval_only:
        if not cfg.MODEL.WEIGHTS and not args.resume and not args.eval_random_weights:
            raise ValueError(
                "--eval-only needs trained weights: set MODEL.WEIGHTS to a checkpoint (or add "
                "--resume to evaluate the last checkpoint in OUTPUT_DIR). To score a randomly "
                "initialised model on purpose, add --eval-random-weights."
            )
        model = Trainer.build_model(cfg)
        load_weights(model, cfg, resume=args.resume)
        if args.eval_timesteps:
            return timestep_sweep(cfg, model, parse_counts(args.eval_timesteps))
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Detectron2's ``default_argument_parser`` plus ``--eval-timesteps``,
    ``--eval-random-weights`` and ``--unsafe-allow-pickle``."""
    parser = default_argument_parser()
    parser.add_argument(
        "--eval-timesteps",
        default="",
        help="with --eval-only: comma-separated inference step counts to evaluate in one pass",
    )
    parser.add_argument(
        "--eval-random-weights",
        action="store_true",
        help="with --eval-only: allow evaluating without MODEL.WEIGHTS (a randomly initialised "
        "model), which is otherwise an error",
    )
    parser.add_argument(
        "--unsafe-allow-pickle",
        action="store_true",
        help="UNSAFE: load checkpoints with full unpickling, which runs any code they name. "
        "Only for files you trust; by default only weights are read",
    )
    args = parser.parse_args(argv)
    if args.eval_random_weights and not args.eval_only:
        parser.error("--eval-random-weights only applies to --eval-only")
    if args.eval_timesteps:
        if not args.eval_only:
            parser.error("--eval-timesteps evaluates a trained model: add --eval-only")
        parse_counts(args.eval_timesteps)  # fail before launching workers
    return args


def launch_main(args: argparse.Namespace) -> None:
    """Run :func:`main` in ``args.num_gpus`` processes on each of ``args.num_machines`` machines
    (Detectron2's ``launch``: NCCL on GPUs, gloo on CPU processes)."""
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )

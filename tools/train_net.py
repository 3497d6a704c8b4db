#!/usr/bin/env python
"""Train or evaluate an rpanoptic model (Detectron2's usual command line).

  python tools/train_net.py --config-file configs/<name>.yaml [--num-gpus 8] [KEY VALUE ...]
  python tools/train_net.py --config-file configs/<name>.yaml --eval-only MODEL.WEIGHTS <ckpt>
  python tools/train_net.py --config-file ... --eval-only --eval-timesteps 1,5,10,20,30,40 \\
      MODEL.WEIGHTS <ckpt>      # PQ at each inference step count, one pass over the data
"""
from detectron2.engine import default_argument_parser, launch

import rpanoptic  # noqa: F401  (registers rpanoptic's components, also in spawned workers)
from rpanoptic.engine import Trainer, setup
from rpanoptic.engine.checkpoint import load_weights
from rpanoptic.evaluation import parse_counts, timestep_sweep


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        load_weights(model, cfg, resume=args.resume)
        if args.eval_timesteps:
            return timestep_sweep(cfg, model, parse_counts(args.eval_timesteps))
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def parse_args(argv=None):
    parser = default_argument_parser()
    parser.add_argument(
        "--eval-timesteps",
        default="",
        help="with --eval-only: comma-separated inference step counts to evaluate in one pass",
    )
    args = parser.parse_args(argv)
    if args.eval_timesteps:
        if not args.eval_only:
            parser.error("--eval-timesteps evaluates a trained model: add --eval-only")
        parse_counts(args.eval_timesteps)  # fail before launching workers
    return args


if __name__ == "__main__":
    args = parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )

#!/usr/bin/env python
"""Train or evaluate a LazyConfig (Python config) of rpanoptic, e.g. configs/LazyConfigs/*.py,
with Detectron2's SimpleTrainer, rpanoptic's LCPHook (C-RBP's penalty and the recurrent
diagnostics) and the safe checkpointer.

  python tools/lazyconfig_train_net.py --config-file \\
      configs/LazyConfigs/panoptic_rfpn_R_50_crbp20_1x.py --num-gpus 8 train.max_iter=1000
  python tools/lazyconfig_train_net.py --config-file C.py --eval-only train.init_checkpoint=W

A Python config is a program: loading it runs its code. The configs shipped in
configs/LazyConfigs load as they are; any other .py file needs --trust-config (or
RPANOPTIC_TRUST_CONFIG=1), after you have read it. YAML configs go through tools/train_net.py.
"""
import logging
import os
import sys

import rpanoptic  # noqa: F401  (first: registers the components, quiets the imports below)

# isort: split
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
    launch,
)
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from rpanoptic.engine.checkpoint import RPanopticCheckpointer
from rpanoptic.engine.hooks import LCPHook
from rpanoptic.engine.setup import check_python_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "configs", "LazyConfigs")
logger = logging.getLogger("rpanoptic")


def do_test(cfg, model):
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    print_csv_format(results)
    return results


def do_train(args, cfg):
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optim)
    checkpointer = RPanopticCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    lcp = LCPHook(
        lcp_weight=cfg.train.get("lcp_weight", 1e-3),
        period=cfg.train.get("diagnostics_period", 100),
    )
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            lcp,
            (
                hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
                if comm.is_main_process()
                else None
            ),
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            (
                hooks.PeriodicWriter(
                    default_writers(cfg.train.output_dir, cfg.train.max_iter),
                    period=cfg.train.log_period,
                )
                if comm.is_main_process()
                else None
            ),
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)


def main(args):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    default_setup(cfg, args)
    if args.eval_only:
        model = create_ddp_model(instantiate(cfg.model).to(cfg.train.device))
        RPanopticCheckpointer(model).load(cfg.train.init_checkpoint)
        return do_test(cfg, model)
    do_train(args, cfg)


if __name__ == "__main__":
    parser = default_argument_parser()
    parser.add_argument("--trust-config", action="store_true", help="load a Python config")
    args = parser.parse_args()
    try:
        check_python_config(args.config_file, SHIPPED, args.trust_config)
    except ValueError as e:
        print(f"lazyconfig_train_net: {e}", file=sys.stderr)
        sys.exit(2)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )

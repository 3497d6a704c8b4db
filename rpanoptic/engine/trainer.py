"""rpanoptic's Trainer: Detectron2's DefaultTrainer with panoptic evaluators, the LCP hook, and
data parallelism that also works for CPU processes."""

import logging
import os
import weakref
from typing import Optional

import torch
from detectron2.data import MetadataCatalog, build_detection_train_loader
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.engine import hooks as d2_hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, SemSegEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..evaluation.enclosure import enclosure_evaluator
from ..evaluation.panoptic import PanopticEvaluator
from ..modeling import build_model, parameter_groups
from .checkpoint import RPanopticCheckpointer
from .hooks import LCPHook, ParameterStatsHook
from .resume import (
    SkipSampler,
    check_recurrent_settings,
    recurrent_settings,
    rng_state,
    set_rng_state,
)

__all__ = ["Trainer", "scale_recurrent_lr", "wrap_data_parallel"]

logger = logging.getLogger(__name__)


def wrap_data_parallel(model: torch.nn.Module, cfg) -> torch.nn.Module:
    """DistributedDataParallel when there are several processes; ``device_ids=None`` for a model
    on the CPU (DDP rejects device ids for CPU modules); find_unused_parameters from
    MODEL.DDP_FIND_UNUSED_PARAMETERS."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    return create_ddp_model(
        model,
        broadcast_buffers=False,
        device_ids=None if on_cpu else [comm.get_local_rank()],
        find_unused_parameters=cfg.MODEL.DDP_FIND_UNUSED_PARAMETERS,
    )


def scale_recurrent_lr(optimizer: torch.optim.Optimizer, model, factor: float) -> None:
    """Multiply the learning rate of the recurrent cells' parameters (the ``recurrent`` group of
    :func:`rpanoptic.modeling.parameter_groups`) by ``factor``, in place, splitting any
    optimizer group that mixes them with other parameters. Call before the LR scheduler is
    built (it records each group's initial lr)."""
    if factor == 1.0:
        return
    recurrent = {id(p) for p in parameter_groups(model).get("recurrent", {}).values()}
    groups, optimizer.param_groups = optimizer.param_groups, []
    for group in groups:
        mine = [p for p in group["params"] if id(p) in recurrent]
        rest = [p for p in group["params"] if id(p) not in recurrent]
        if rest:
            optimizer.add_param_group({**group, "params": rest})
        if mine:
            optimizer.add_param_group({**group, "params": mine, "lr": group["lr"] * factor})


class Trainer(DefaultTrainer):
    """DefaultTrainer + :class:`LCPHook` + :class:`ParameterStatsHook` + COCO panoptic (with
    PQ per category) / instance / semantic evaluation.

    A non-finite recurrent state raises FloatingPointError naming the layer and the step
    (MODEL.RECURRENT.CHECK_FINITE); the periodic checkpoints written before stay on disk.
    """

    def __init__(self, cfg):
        # As DefaultTrainer.__init__, with wrap_data_parallel in place of create_ddp_model.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        # The data order's seed is kept in checkpoints, so that a resumed run continues it.
        self.data_seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        data_loader = self.build_train_loader(cfg, seed=self.data_seed)
        model = wrap_data_parallel(model, cfg)
        trainer_cls = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_cls(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = RPanopticCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0, seed: Optional[int] = None):
        """Detectron2's training loader, with the TrainingSampler's data order drawn from
        ``seed`` and its first ``start_iter`` iterations' images skipped (for a resumed run).

        The data loader workers' augmentations are seeded from ``seed`` too. A resumed run sees
        exactly the images the interrupted one would have seen when every image falls in one
        aspect-ratio group (or DATALOADER.ASPECT_RATIO_GROUPING is off) and
        DATALOADER.NUM_WORKERS is 0; otherwise the order may shift by a few images.
        """
        kwargs = build_detection_train_loader.from_config(cfg)
        sampler = kwargs["sampler"]
        if type(sampler) is TrainingSampler and seed is not None:
            sampler = TrainingSampler(len(kwargs["dataset"]), seed=seed)
        if start_iter > 0 and sampler is not None:
            sampler = SkipSampler(
                sampler, start_iter * kwargs["total_batch_size"] // comm.get_world_size()
            )
        return build_detection_train_loader(**dict(kwargs, sampler=sampler), seed=seed)

    def resume_or_load(self, resume: bool = True):
        """As DefaultTrainer's; a resumed run also gets back its random-number states, its data
        order from where it stopped, and is checked to train the same recurrent settings."""
        super().resume_or_load(resume=resume)
        if self.start_iter > 0:
            self._trainer.reset_data_loader(
                lambda: self.build_train_loader(self.cfg, self.start_iter, self.data_seed)
            )

    def state_dict(self):
        state = super().state_dict()
        state.update(
            rng=rng_state(), data_seed=self.data_seed, recurrent=recurrent_settings(self.cfg)
        )
        return state

    def load_state_dict(self, state):
        check_recurrent_settings(
            self.cfg, state.get("recurrent"), self.checkpointer.get_checkpoint_file()
        )
        super().load_state_dict(state)
        self.data_seed = state.get("data_seed", self.data_seed)
        if "rng" in state:
            set_rng_state(state["rng"])

    @classmethod
    def build_optimizer(cls, cfg, model):
        """Detectron2's optimizer, with the recurrent cells' learning rate multiplied by
        MODEL.RECURRENT.LR_FACTOR (see :func:`scale_recurrent_lr`)."""
        optimizer = super().build_optimizer(cfg, model)
        scale_recurrent_lr(optimizer, model, cfg.MODEL.RECURRENT.LR_FACTOR)
        return optimizer

    @classmethod
    def build_model(cls, cfg):
        model = build_model(cfg)
        logger.info("Model:\n%s", model)
        return model

    def after_train(self):
        """As Detectron2's, except after a run stopped by an exception: then the final
        evaluation and the ``model_final`` checkpoint are skipped (Detectron2 does both when the
        failure happens in the last iteration), so a broken run never reports results or leaves
        a file that looks finished. The other hooks (writers) still run."""
        self.storage.iter = self.iter
        stopped = self.iter < self.max_iter  # a finished loop leaves iter == max_iter
        for hook in self._hooks:
            if stopped and isinstance(hook, (d2_hooks.EvalHook, d2_hooks.PeriodicCheckpointer)):
                continue
            hook.after_train()

    def build_hooks(self):
        hooks = super().build_hooks()
        # Before the writers (the last hooks), so that diagnostics of an iteration are written.
        hooks.insert(len(hooks) - 1, LCPHook(self.cfg))
        hooks.insert(len(hooks) - 1, ParameterStatsHook(self.cfg))
        return hooks

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """PanopticEvaluator (COCO panoptic, plus PQ per category) + COCOEvaluator +
        SemSegEvaluator for panoptic datasets, + EnclosureEvaluator on the enclosure scenes."""
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        kind = MetadataCatalog.get(dataset_name).evaluator_type
        evaluators = []
        if kind in ("sem_seg", "coco_panoptic_seg"):
            evaluators.append(
                SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)
            )
        if kind in ("coco", "coco_panoptic_seg"):
            evaluators.append(COCOEvaluator(dataset_name, output_dir=output_folder))
        if kind == "coco_panoptic_seg":
            enclosure = enclosure_evaluator(dataset_name)
            if enclosure is not None:  # the enclosure scenes: also the closure scores
                evaluators.append(enclosure)
            evaluators.append(PanopticEvaluator(dataset_name, output_folder))
        if not evaluators:
            raise NotImplementedError(
                f"No evaluator for dataset {dataset_name!r} of evaluator_type {kind!r}; register "
                "it with rpanoptic.data.register_panoptic_dataset or pass evaluators to test()."
            )
        return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)

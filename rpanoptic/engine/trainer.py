"""rpanoptic's Trainer: Detectron2's DefaultTrainer with panoptic evaluators, the LCP hook, and
data parallelism that also works for CPU processes."""

import logging
import os
import weakref

import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..modeling import build_model
from .checkpoint import RPanopticCheckpointer
from .hooks import LCPHook

__all__ = ["Trainer", "wrap_data_parallel"]

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


class Trainer(DefaultTrainer):
    """DefaultTrainer + :class:`LCPHook` + COCO panoptic / instance / semantic evaluation.

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
        data_loader = self.build_train_loader(cfg)
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
    def build_model(cls, cfg):
        model = build_model(cfg)
        logger.info("Model:\n%s", model)
        return model

    def build_hooks(self):
        hooks = super().build_hooks()
        # Before the writers (the last hooks), so that diagnostics of an iteration are written.
        hooks.insert(len(hooks) - 1, LCPHook(self.cfg))
        return hooks

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """COCOPanopticEvaluator + COCOEvaluator + SemSegEvaluator for panoptic datasets."""
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
            evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
        if not evaluators:
            raise NotImplementedError(
                f"No evaluator for dataset {dataset_name!r} of evaluator_type {kind!r}; register "
                "it with rpanoptic.data.register_panoptic_dataset or pass evaluators to test()."
            )
        return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)

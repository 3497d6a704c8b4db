"""Export a Panoptic FPN model (recurrent or not) as TorchScript, traced at a fixed number of
inference steps.

What is traced is the network from the resized image tensor to the raw outputs, as five
tensors in this order::

    boxes (R, 4), scores (R,), classes (R,), mask probabilities (R, 1, M, M), sem_seg logits
    (S, H, W)

for one image of size (H, W) (the size after the test-time resize). The post-processing that
follows (pasting the masks at the original size and combining things and stuff into the
panoptic segmentation) depends on the data, so it stays in Python: :func:`postprocess` turns
those tensors into the same output dict as the eager model's.

Steps and halting: the recurrence is unrolled in the trace, so the exported model always runs
the step count it was traced with (MODEL.RECURRENT.TEST_TIMESTEPS, else TIMESTEPS). Halting
(HALT_TOL > 0) stops each sample at a step that depends on its data, which a trace cannot
keep; :func:`export_traced` refuses it. Export at a fixed count instead, e.g. the mean steps
that halting took (``tools/predict.py`` prints it).
"""

import os
import warnings
from typing import Tuple

import torch
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from detectron2.structures import Boxes, Instances
from torch import nn

from ..modeling import recurrent_layers
from ..utils import atomic_write

__all__ = ["RawPanoptic", "export_traced", "load_exported", "postprocess"]


class RawPanoptic(nn.Module):
    """A Panoptic FPN model as a function of one resized image tensor (3, H, W), in the model's
    input format, to its five raw output tensors (see the module docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        instances, sem_seg = self.model.inference([{"image": image}], do_postprocess=False)
        found = instances[0]
        masks = found.pred_masks if found.has("pred_masks") else torch.zeros(0, 1, 28, 28)
        return found.pred_boxes.tensor, found.scores, found.pred_classes, masks, sem_seg[0]


def export_traced(model: nn.Module, image: torch.Tensor, path: str) -> torch.jit.ScriptModule:
    """Trace ``model`` (a Panoptic FPN, put in eval mode) on ``image`` (3, H, W) and save the
    TorchScript module to ``path``; returns it.

    Raises ValueError when a recurrent layer halts (its step count would depend on the data).
    """
    halting = [name for name, rec in recurrent_layers(model).items() if rec.halt_tol > 0]
    if halting:
        raise ValueError(
            f"Cannot export with halting (HALT_TOL > 0 in {', '.join(halting)}): the steps each "
            "sample takes depend on its data and a trace keeps one path. Export with "
            "MODEL.RECURRENT.HALT_TOL 0 and TEST_TIMESTEPS set to the step count wanted."
        )
    model.eval()
    wrapper = RawPanoptic(model).eval()
    with torch.no_grad(), warnings.catch_warnings():
        # data-dependent Python branches (e.g. the non-finite check) are recorded as taken
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(wrapper, (image,), check_trace=False)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, lambda f: torch.jit.save(traced, f))
    return traced


def load_exported(path: str, device: str = "cpu") -> torch.jit.ScriptModule:
    """Load a module written by :func:`export_traced` (TorchScript: no Python code is run)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported model {path} does not exist.")
    return torch.jit.load(path, map_location=device)


def postprocess(raw: Tuple[torch.Tensor, ...], image_size, height: int, width: int, cfg) -> dict:
    """The eager model's output dict (``sem_seg``, ``instances``, ``panoptic_seg``) from the
    exported model's raw outputs for an image resized to ``image_size`` (h, w) from its
    original ``height`` x ``width``; the combination thresholds come from ``cfg``."""
    boxes, scores, classes, masks, sem_seg = raw
    found = Instances(tuple(image_size))
    found.pred_boxes = Boxes(boxes)
    found.scores = scores
    found.pred_classes = classes
    found.pred_masks = masks
    sem = sem_seg_postprocess(sem_seg, tuple(image_size), height, width)
    detections = detector_postprocess(found, height, width)
    combine = cfg.MODEL.PANOPTIC_FPN.COMBINE
    panoptic = combine_semantic_and_instance_outputs(
        detections,
        sem.argmax(dim=0),
        combine.OVERLAP_THRESH,
        combine.STUFF_AREA_LIMIT,
        combine.INSTANCES_CONFIDENCE_THRESH,
    )
    return {"sem_seg": sem, "instances": detections, "panoptic_seg": panoptic}

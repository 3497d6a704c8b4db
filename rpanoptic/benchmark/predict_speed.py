"""Images per second of ``tools/predict.py``'s predictor, with and without halting: every
setting runs on the same images, in alternation (setting A on image 1, B on image 1, A on
image 2...), so that a machine's changing load reaches all settings alike. And what each
setting costs in quality: PQ on a registered dataset, with the mean steps taken there."""

import statistics
import tempfile
from typing import Dict, List, Sequence

import torch
from detectron2.data import build_detection_test_loader
from detectron2.data import detection_utils as utils
from detectron2.evaluation import inference_on_dataset

from ..evaluation.panoptic import PanopticEvaluator
from ..inference import Predictor

__all__ = ["predict_speed", "setting_quality"]


def predict_speed(cfgs: Dict[str, object], paths: Sequence[str], warmup: int = 2) -> List[Dict]:
    """Time the model of each config (``{label: cfg}``) on each image of ``paths``.

    Returns one row per setting: ``setting``, ``images``, ``s_per_image`` (median),
    ``images_per_s`` (1 / that median), ``steps`` (mean over images of the mean steps of the
    recurrent layers; 0 for a feed-forward model)."""
    predictors = {label: Predictor(cfg) for label, cfg in cfgs.items()}
    first = next(iter(predictors.values()))
    images = [utils.read_image(p, format=first.cfg.INPUT.FORMAT) for p in paths]
    times: Dict[str, List[float]] = {label: [] for label in predictors}
    steps: Dict[str, List[float]] = {label: [] for label in predictors}
    for i, image in enumerate(images):
        for label, predictor in predictors.items():
            prediction = predictor(image)
            if i < warmup:
                continue
            times[label].append(prediction.seconds)
            layer_steps = list(prediction.steps.values())
            steps[label].append(statistics.mean(layer_steps) if layer_steps else 0.0)
    rows = []
    for label in predictors:
        median = statistics.median(times[label])
        rows.append(
            {
                "setting": label,
                "images": len(times[label]),
                "s_per_image": median,
                "images_per_s": 1.0 / median,
                "steps": statistics.mean(steps[label]),
            }
        )
    return rows


def setting_quality(cfgs: Dict[str, object], dataset: str = "") -> Dict[str, Dict[str, float]]:
    """PQ, PQ_th and PQ_st of the model of each config (``{label: cfg}``) on ``dataset``
    (default: the config's DATASETS.TEST[0]), and ``eval_steps``: the mean over images and
    recurrent layers of the steps each layer took (0 for a feed-forward model)."""
    out = {}
    for label, cfg in cfgs.items():
        predictor = Predictor(cfg)
        name = dataset or cfg.DATASETS.TEST[0]
        steps: List[float] = []
        hooks = [
            layer.register_forward_hook(
                lambda module, args, output: (
                    steps.append(float(module.steps.float().mean()))
                    if module.steps.numel()
                    else None
                )
            )
            for layer in predictor.layers.values()
        ]
        try:
            with tempfile.TemporaryDirectory() as folder, torch.no_grad():
                loader = build_detection_test_loader(cfg, name)
                results = inference_on_dataset(
                    predictor.model, loader, PanopticEvaluator(name, folder)
                )["panoptic_seg"]
        finally:
            for hook in hooks:
                hook.remove()
        out[label] = {
            "PQ": results["PQ"],
            "PQ_th": results["PQ_th"],
            "PQ_st": results["PQ_st"],
            "eval_steps": statistics.mean(steps) if steps else 0.0,
        }
    return out

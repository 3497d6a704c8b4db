"""Images per second of ``tools/predict.py``'s predictor, with and without halting: every
setting runs on the same images, in alternation (setting A on image 1, B on image 1, A on
image 2...), so that a machine's changing load reaches all settings alike."""

import statistics
from typing import Dict, List, Sequence

from detectron2.data import detection_utils as utils

from ..inference import Predictor

__all__ = ["predict_speed"]


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

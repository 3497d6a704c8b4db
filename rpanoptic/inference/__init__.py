"""Using a trained model: predictions on images, folders, globs and videos
(:mod:`.predictor`), in COCO panoptic format (:mod:`.panoptic_files`), and export at a fixed
step count (:mod:`.export`)."""

from .panoptic_files import PanopticWriter, ids_to_rgb
from .predictor import PredictOptions, Predictor, expand_inputs, load_weights, predict_files

__all__ = [
    "PanopticWriter",
    "Predictor",
    "PredictOptions",
    "expand_inputs",
    "ids_to_rgb",
    "load_weights",
    "predict_files",
]

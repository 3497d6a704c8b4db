"""Run a trained model on a user's images, folders, globs or a video (what ``tools/predict.py``
does): a Visualizer overlay per image, the predictions in COCO panoptic format, a strip of the
prediction as the recurrent steps unfold, and a CSV of inference time and the steps each
recurrent layer took (with halting, the mean over its samples: images or RoIs)."""

import contextlib
import csv
import glob
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils

from ..engine.checkpoint import RPanopticCheckpointer
from ..evaluation.report import draw_panoptic, draw_unfolding_image, image_inputs
from ..modeling import build_model, recurrent_layers
from ..utils import atomic_write
from .panoptic_files import PanopticWriter

__all__ = ["Predictor", "PredictOptions", "expand_inputs", "load_weights", "predict_files"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def expand_inputs(items: Sequence[str]) -> List[str]:
    """Image paths from paths, folders (their images, sorted) and globs, in the order given,
    each once. Raises FileNotFoundError naming an item that matches nothing."""
    out: List[str] = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, f)
                for f in os.listdir(item)
                if f.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif os.path.isfile(item):
            found = [item]
        else:
            found = sorted(glob.glob(os.path.expanduser(item), recursive=True))
            found = [f for f in found if os.path.isfile(f)]
        if not found:
            raise FileNotFoundError(
                f"--input {item!r} matches no image (not a file, a folder with images, or a "
                "glob that matches files); check the path or quote the glob."
            )
        out += [f for f in found if f not in out]
    return out


def load_weights(model: torch.nn.Module, weights: str) -> None:
    """Load ``weights`` into ``model`` through the safe checkpointer; raise ValueError naming
    the missing, unexpected and mis-shaped keys when the checkpoint does not fit the config."""
    if not weights:
        raise ValueError(
            "No weights: pass MODEL.WEIGHTS path/to/model_final.pth (predicting with random "
            "weights shows nothing)."
        )
    if "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"MODEL.WEIGHTS {weights} does not exist.")
    checkpointer = _KeyCheckingCheckpointer(model)
    checkpointer.load(weights, checkpointables=[])
    incompatible = checkpointer.incompatible
    problems = []
    if incompatible.missing_keys:
        problems.append(f"missing from the checkpoint: {_some(incompatible.missing_keys)}")
    if incompatible.unexpected_keys:
        problems.append(f"not in the model: {_some(incompatible.unexpected_keys)}")
    if incompatible.incorrect_shapes:
        shapes = [f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in incompatible.incorrect_shapes]
        problems.append(f"shapes differ (checkpoint vs model): {_some(shapes)}")
    if problems:
        raise ValueError(
            f"{weights} does not match the model built from the config ("
            + "; ".join(problems)
            + "). Use the config the checkpoint was trained with."
        )


class _KeyCheckingCheckpointer(RPanopticCheckpointer):
    """Keeps what loading the model's state reported (fvcore only logs it)."""

    incompatible = None

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def _some(keys: Sequence[str], show: int = 8) -> str:
    keys = list(keys)
    more = f" and {len(keys) - show} more" if len(keys) > show else ""
    return ", ".join(keys[:show]) + more


def prediction_metadata(cfg):
    """The metadata that names the model's classes: DATASETS.TEST[0]'s (Panoptic FPN predicts
    stuff with the ``_separated`` class list)."""
    if not cfg.DATASETS.TEST:
        raise ValueError("The config names no DATASETS.TEST: the class names come from there.")
    name = cfg.DATASETS.TEST[0]
    if name not in DatasetCatalog.list() and name not in MetadataCatalog.list():
        raise ValueError(
            f"DATASETS.TEST[0] = {name!r} is not registered, so the classes have no names or "
            "dataset ids; register it (e.g. `import rpanoptic` registers the synthetic sets) or "
            "set DATASETS.TEST to a registered dataset with the same classes."
        )
    return MetadataCatalog.get(name)


@dataclass
class Prediction:
    """One image's output and what it cost."""

    output: dict
    seconds: float
    steps: Dict[str, float] = field(default_factory=dict)  # layer -> mean steps taken


class Predictor:
    """A model built from ``cfg`` with its weights loaded, in eval mode. ``predictor(image)``
    takes an (H, W, 3) uint8 image in cfg.INPUT.FORMAT and returns a :class:`Prediction`."""

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        load_weights(self.model, self.cfg.MODEL.WEIGHTS)
        self.layers = recurrent_layers(self.model)
        self.metadata = prediction_metadata(self.cfg)
        cuda = self.cfg.MODEL.DEVICE.startswith("cuda")
        self._sync = torch.cuda.synchronize if cuda else (lambda: None)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Prediction:
        inputs = [image_inputs(self.cfg, image)]
        with contextlib.ExitStack() as stack:
            # a layer that did not run on this image (e.g. a mask head without detections)
            # records nothing, and its steps from an earlier image are not reported
            records = {n: stack.enter_context(r.recording()) for n, r in self.layers.items()}
            self._sync()
            start = time.perf_counter()
            output = self.model(inputs)[0]
            self._sync()
            seconds = time.perf_counter() - start
        steps = {
            name: float(self.layers[name].steps.float().mean())
            for name, record in records.items()
            if record.state is not None and self.layers[name].steps.numel()
        }
        return Prediction(output, seconds, steps)

    def rgb(self, image: np.ndarray) -> np.ndarray:
        return image[:, :, ::-1] if self.cfg.INPUT.FORMAT == "BGR" else image

    def overlay(self, image: np.ndarray, prediction: Prediction) -> np.ndarray:
        """The panoptic overlay (RGB) of a prediction on its image."""
        return draw_panoptic(self.rgb(image), self.metadata, prediction.output)


@dataclass
class PredictOptions:
    unfold: Tuple[int, ...] = ()  # step counts of the unfolding strip (empty: none)
    progress: bool = True


def _read(path: str, image_format: str) -> Optional[np.ndarray]:
    try:
        return utils.read_image(path, format=image_format)
    except Exception as e:  # PIL raises several types for unreadable files
        logger.warning("Skipping %s: it cannot be read as an image (%s).", path, e)
        return None


def _names(paths: Sequence[str]) -> List[str]:
    """Output names: the file stem, with the parent folder when stems collide."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [
        f"{os.path.basename(os.path.dirname(os.path.abspath(p)))}_{s}" if stems.count(s) > 1 else s
        for p, s in zip(paths, stems)
    ]


def predict_files(predictor: Predictor, paths: Sequence[str], out_dir: str, options=None) -> Dict:
    """Predict every image of ``paths`` and write, under ``out_dir``: ``<name>.png`` (overlay),
    ``<name>_unfold.png`` (with ``options.unfold`` and a recurrent model), ``panoptic/<name>.png``
    + ``panoptic.json`` (COCO panoptic format) and ``summary.csv`` (per image: seconds and steps
    per recurrent layer). Unreadable images are skipped with a warning.

    Returns a summary: ``images``, ``skipped``, ``seconds`` (mean per image), ``steps``
    ({layer: mean}), and the paths ``csv`` and ``json``.
    """
    from PIL import Image
    from tqdm import tqdm

    options = options or PredictOptions()
    os.makedirs(out_dir, exist_ok=True)
    writer = PanopticWriter(out_dir, predictor.metadata)
    rows, skipped = [], []
    pairs = list(zip(paths, _names(paths)))
    for path, name in tqdm(pairs, desc="predict", unit="image", disable=not options.progress):
        image = _read(path, predictor.cfg.INPUT.FORMAT)
        if image is None:
            skipped.append(path)
            continue
        prediction = predictor(image)
        Image.fromarray(predictor.overlay(image, prediction)).save(
            os.path.join(out_dir, name + ".png")
        )
        panoptic, segments = prediction.output["panoptic_seg"]
        writer.add(name, panoptic, segments)
        if options.unfold and predictor.layers:
            strip = os.path.join(out_dir, name + "_unfold.png")
            draw_unfolding_image(
                predictor.model,
                predictor.cfg,
                image,
                sorted(set(options.unfold)),
                strip,
                predictor.metadata,
            )
        rows.append(
            {
                "file": path,
                "height": image.shape[0],
                "width": image.shape[1],
                "segments": len(segments or []),
                "seconds": prediction.seconds,
                **{f"steps/{k}": v for k, v in prediction.steps.items()},
            }
        )
    json_path = writer.close()
    csv_path = os.path.join(out_dir, "summary.csv")
    _write_rows(csv_path, rows)
    return _summary(rows, skipped, csv_path, json_path)


def _write_rows(path: str, rows: List[dict]) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row)) or ["file", "seconds"]

    def write(f):
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)

    atomic_write(path, write, binary=False)


def _summary(rows: List[dict], skipped: List[str], csv_path: str, json_path: str) -> Dict:
    layers = sorted({k for row in rows for k in row if k.startswith("steps/")})
    return {
        "images": len(rows),
        "skipped": skipped,
        "seconds": float(np.mean([r["seconds"] for r in rows])) if rows else float("nan"),
        "steps": {
            k[len("steps/") :]: float(np.mean([r[k] for r in rows if k in r])) for k in layers
        },
        "csv": csv_path,
        "json": json_path,
    }


def _frames(path: str) -> Tuple[Iterator[np.ndarray], float, int]:
    import cv2

    video = cv2.VideoCapture(path)
    if not video.isOpened():
        raise ValueError(f"--video-input {path} cannot be opened as a video (OpenCV).")
    fps = video.get(cv2.CAP_PROP_FPS) or 25.0
    count = int(video.get(cv2.CAP_PROP_FRAME_COUNT))

    def frames() -> Iterable[np.ndarray]:
        try:
            while True:
                ok, frame = video.read()
                if not ok:
                    break
                yield frame  # BGR
        finally:
            video.release()

    return iter(frames()), fps, count


def predict_video(predictor: Predictor, path: str, out_dir: str, progress: bool = True) -> Dict:
    """Predict each frame of the video ``path`` in order and write ``<out_dir>/<stem>.mp4`` with
    the overlays and ``summary.csv`` (per frame: seconds and steps per recurrent layer)."""
    import cv2
    from tqdm import tqdm

    frames, fps, count = _frames(path)
    os.makedirs(out_dir, exist_ok=True)
    out_path = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".mp4")
    writer, rows = None, []
    for i, frame in enumerate(tqdm(frames, total=count or None, disable=not progress)):
        image = frame if predictor.cfg.INPUT.FORMAT == "BGR" else frame[:, :, ::-1]
        prediction = predictor(np.ascontiguousarray(image))
        picture = predictor.overlay(image, prediction)[:, :, ::-1]  # RGB -> BGR for OpenCV
        if writer is None:
            height, width = picture.shape[:2]
            writer = cv2.VideoWriter(
                out_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height)
            )
        writer.write(np.ascontiguousarray(picture))
        rows.append(
            {
                "frame": i,
                "seconds": prediction.seconds,
                **{f"steps/{k}": v for k, v in prediction.steps.items()},
            }
        )
    if writer is None:
        raise ValueError(f"--video-input {path} has no frame that OpenCV can read.")
    writer.release()
    csv_path = os.path.join(out_dir, "summary.csv")
    _write_rows(csv_path, rows)
    summary = _summary(rows, [], csv_path, "")
    summary["video"] = out_path
    return summary

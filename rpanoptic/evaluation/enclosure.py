"""Scoring the part of an enclosure scene whose answer needs the whole loop.

PQ mixes what a model must get from far away (is this loop closed?) with what it can see
locally (where a token is, where the ground is). On the enclosure scenes
(:mod:`rpanoptic.data.enclosure_scene`) this evaluator asks the long-range question alone:

- **tokens** inside a loop: of those the model finds (a predicted thing segment with IoU > 0.5,
  PQ's match), how many get the right category: ``enclosed`` in a closed loop, ``free`` in an
  open one;
- **loop interiors**: of the ground pixels inside a loop's outline, how many get the right
  stuff label: ``inside`` in a closed loop, ``outside`` in an open one.

Each is balanced over closed and open loops (the mean of the two rates), so 50 is what a model
scores that treats every loop the same way, e.g. by the local rule "surrounded by a contour, so
enclosed", and 100 is a model that tells closed loops from open ones. Tokens outside every loop
(always ``free``) are reported apart. The layouts come from drawing each scene again from the
dataset's ``generator.json`` (:func:`rpanoptic.data.synthetic.scene_layout`).
"""

import itertools
import logging
import os
from collections import OrderedDict
from typing import Dict, Optional

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..data.enclosure_scene import ENCLOSED, FREE, INSIDE, LOOP_INTERIOR, OUTSIDE
from ..data.synthetic import SPLITS, read_recipe, scene_layout, synthetic_paths

__all__ = [
    "CLOSURE_SCORES",
    "EnclosureEvaluator",
    "enclosure_evaluator",
    "score_scene",
    "closure_scores",
]

logger = logging.getLogger(__name__)

CLOSURE_SCORES = ["token_closure", "interior_closure"]  # the two headline scores
WHERE = ("closed loop", "open loop", "no loop")
RIGHT_TOKEN = {"closed loop": ENCLOSED, "open loop": FREE, "no loop": FREE}
RIGHT_GROUND = {"closed loop": INSIDE, "open loop": OUTSIDE}


def score_scene(gt_ids: np.ndarray, layout: dict, pred_ids: np.ndarray, pred_category: Dict):
    """Counts for one scene.

    Args:
        gt_ids: the ground-truth segment-id map (category = id // 1000, 0 on the contours).
        layout: the scene's layout (``tokens``: {token id: where}; ``interiors``).
        pred_ids: the predicted segment-id map, same shape (0: no segment).
        pred_category: {predicted segment id: (dataset category id, is a thing)}.

    Returns:
        {"tokens": {where: [count, found, right]}, "ground": {where: [pixels, right]}}.
    """
    if gt_ids.shape != pred_ids.shape:
        raise ValueError(f"prediction of shape {pred_ids.shape} for a scene of {gt_ids.shape}")
    counts = _no_counts()
    pred_flat, gt_flat = pred_ids.ravel(), gt_ids.ravel()
    things = {s for s, (_, thing) in pred_category.items() if thing}
    for token, where in layout["tokens"].items():
        mask = gt_flat == token
        if not mask.any():
            continue
        row = counts["tokens"][where]
        row[0] += 1
        inside_ids, overlap = np.unique(pred_flat[mask], return_counts=True)
        for segment, n in zip(inside_ids, overlap):
            if int(segment) not in things:
                continue
            union = mask.sum() + (pred_flat == segment).sum() - n
            if n / union > 0.5:
                row[1] += 1
                row[2] += int(pred_category[int(segment)][0] == RIGHT_TOKEN[where])
                break
    categories = np.zeros(int(pred_flat.max()) + 1, dtype=np.int64)
    for segment, (category, _) in pred_category.items():
        if 0 <= segment < len(categories):
            categories[segment] = category
    labels = categories[pred_flat]
    ground = np.isin(gt_flat // 1000, (INSIDE, OUTSIDE))
    interiors = layout["interiors"].ravel()
    for where, right in RIGHT_GROUND.items():
        pixels = ground & (interiors == LOOP_INTERIOR[where])
        counts["ground"][where][0] += int(pixels.sum())
        counts["ground"][where][1] += int((labels[pixels] == right).sum())
    return counts


def _no_counts():
    """Zero counts: tokens [count, found, right] and ground [pixels, right] per place."""
    return {"tokens": {w: [0, 0, 0] for w in WHERE}, "ground": {w: [0, 0] for w in RIGHT_GROUND}}


def _merge(all_counts):
    total = _no_counts()
    for counts in all_counts:
        for part in total:
            for where, row in counts[part].items():
                total[part][where] = [a + b for a, b in zip(total[part][where], row)]
    return total


def _rate(right, count):
    return 100.0 * right / count if count else float("nan")


def closure_scores(counts) -> "OrderedDict[str, float]":
    """The scores (percent) from merged counts: ``token_closure`` and ``interior_closure``
    (balanced over closed and open loops), then the rates they are made of and the counts."""
    tokens, ground = counts["tokens"], counts["ground"]
    token_rate = {w: _rate(tokens[w][2], tokens[w][1]) for w in WHERE}
    ground_rate = {w: _rate(ground[w][1], ground[w][0]) for w in RIGHT_GROUND}
    out = OrderedDict()
    out["token_closure"] = float(np.mean([token_rate["closed loop"], token_rate["open loop"]]))
    out["interior_closure"] = float(np.mean([ground_rate["closed loop"], ground_rate["open loop"]]))
    for where in WHERE:
        key = where.replace(" ", "_")
        out[f"tokens_{key}/right"] = token_rate[where]
        out[f"tokens_{key}/found"] = _rate(tokens[where][1], tokens[where][0])
        out[f"tokens_{key}/count"] = float(tokens[where][0])
    for where in RIGHT_GROUND:
        out[f"interior_{where.replace(' ', '_')}/right"] = ground_rate[where]
    return out


def _enclosure_source(metadata):
    """(dataset root, split, recipe) of a registered dataset of enclosure scenes written by this
    generator (its panoptic JSON is ``<root>/annotations/panoptic_<split>.json`` and
    ``<root>/generator.json`` is of kind enclosure), or None."""
    panoptic_json = metadata.get("panoptic_json", "")
    root = os.path.dirname(os.path.dirname(panoptic_json)) if panoptic_json else ""
    for split in SPLITS:
        if root and synthetic_paths(root, split)["panoptic_json"] == panoptic_json:
            recipe = read_recipe(root)
            if recipe is not None and recipe["kind"] == "enclosure":
                return root, split, recipe
    return None


def enclosure_evaluator(dataset_name: str) -> Optional["EnclosureEvaluator"]:
    """An :class:`EnclosureEvaluator` when ``dataset_name`` holds enclosure scenes of this
    generator, else None."""
    source = _enclosure_source(MetadataCatalog.get(dataset_name))
    return None if source is None else EnclosureEvaluator(dataset_name, source)


class EnclosureEvaluator(DatasetEvaluator):
    """Detectron2 evaluator of the closure scores (see the module) on an enclosure dataset;
    ``evaluate()`` returns {"enclosure": closure_scores(...)} on the main process."""

    def __init__(self, dataset_name: str, source=None):
        self._metadata = MetadataCatalog.get(dataset_name)
        source = source or _enclosure_source(self._metadata)
        if source is None:
            raise ValueError(
                f"dataset {dataset_name!r} holds no enclosure scenes of this generator (its "
                "panoptic_json is not <root>/annotations/panoptic_<split>.json beside a "
                "generator.json of kind enclosure); the closure scores need that recipe"
            )
        self._root, self._split, self._recipe = source
        inverse = lambda key: {v: k for k, v in self._metadata.get(key, {}).items()}  # noqa: E731
        self._thing_ids = inverse("thing_dataset_id_to_contiguous_id")
        self._stuff_ids = inverse("stuff_dataset_id_to_contiguous_id")
        self._label_divisor = self._metadata.get("label_divisor", 1000)
        self.reset()

    def reset(self):
        self._counts = []

    def _categories(self, pred_ids: np.ndarray, segments_info) -> Dict[int, tuple]:
        if segments_info is None:  # ids encode category * label_divisor + instance
            if set(self._thing_ids) & set(self._stuff_ids):
                raise ValueError(
                    "EnclosureEvaluator: a prediction without segments_info needs the standard "
                    "dataset's metadata (one contiguous id space), not the _separated one"
                )
            segments_info = []
            for segment in np.unique(pred_ids):
                if segment < 0:
                    continue
                category = int(segment) // self._label_divisor
                thing = category in self._thing_ids  # contiguous ids, as the model gives them
                segments_info.append(
                    {"id": int(segment), "category_id": category, "isthing": thing}
                )
        out = {}
        for s in segments_info:
            if "isthing" not in s:  # COCOPanopticEvaluator converted it to dataset ids in place
                category = int(s["category_id"])
                out[int(s["id"])] = (category, category in self._thing_ids.values())
                continue
            table = self._thing_ids if s["isthing"] else self._stuff_ids
            if s["category_id"] in table:
                out[int(s["id"])] = (table[s["category_id"]], bool(s["isthing"]))
        return out

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            pred, segments_info = out["panoptic_seg"]
            pred = pred.cpu().numpy().astype(np.int64)
            layout = scene_layout(self._root, self._split, int(inp["image_id"]), self._recipe)
            pred = np.where(pred < 0, 0, pred)
            self._counts.append(
                score_scene(layout["ids"], layout, pred, self._categories(pred, segments_info))
            )

    def evaluate(self):
        gathered = comm.gather(self._counts, dst=0)
        if not comm.is_main_process():
            return None
        scores = closure_scores(_merge(itertools.chain(*gathered)))
        logger.info(
            "Enclosure: token closure %.1f, interior closure %.1f (balanced over closed and open "
            "loops; 50 = every loop treated alike)",
            scores["token_closure"],
            scores["interior_closure"],
        )
        return {"enclosure": scores}

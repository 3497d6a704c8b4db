"""The closure scores of the enclosure scenes: exact on predictions whose answer is known, the
shortcut "every loop is closed" scores 50, and the evaluator reads Detectron2's outputs."""

import uuid

import numpy as np
import pytest
import torch

from rpanoptic.data.enclosure_scene import (
    ENCLOSED,
    FREE,
    INSIDE,
    LOOP_INTERIOR,
    OUTSIDE,
    EnclosureSpec,
    make_enclosure_scene,
)
from rpanoptic.evaluation.enclosure import closure_scores, score_scene

SPEC = EnclosureSpec(size=96, loop_radius=(0.2, 0.3))


def _scene(seed):
    _, ids, _, layout = make_enclosure_scene(np.random.default_rng([7, seed]), SPEC, True)
    return ids, layout


def _scenes_with_both_kinds_of_loop():
    scenes, kinds = [], set()
    for seed in range(60):
        ids, layout = _scene(seed)
        scenes.append((ids, layout))
        kinds |= set(layout["tokens"].values())
        if len(scenes) >= 8 and {"closed loop", "open loop"} <= kinds:
            return scenes
    raise AssertionError("no closed and open loops with tokens in 60 scenes")


def _as_prediction(ids, relabel=None):
    """The ground truth as a prediction: {segment: (category, is thing)} with the category
    changed by ``relabel(segment id, category)`` where given."""
    categories = {}
    for segment in np.unique(ids):
        if segment == 0:
            continue
        category = int(segment) // 1000
        if relabel is not None:
            category = relabel(int(segment), category)
        categories[int(segment)] = (category, category in (ENCLOSED, FREE))
    return ids.astype(np.int64), categories


def _merged(scenes, relabel=None, pixels=None):
    from rpanoptic.evaluation.enclosure import _merge

    counts = []
    for ids, layout in scenes:
        pred, categories = _as_prediction(ids, None if relabel is None else relabel(layout))
        if pixels is not None:
            pred, categories = pixels(pred, categories, layout)
        counts.append(score_scene(ids, layout, pred, categories))
    return _merge(counts)


def test_the_ground_truth_scores_100_and_counts_every_token():
    scenes = _scenes_with_both_kinds_of_loop()
    merged = _merged(scenes)
    scores = closure_scores(merged)
    assert scores["token_closure"] == 100 and scores["interior_closure"] == 100
    tokens = sum(len(layout["tokens"]) for _, layout in scenes)
    assert sum(row[0] for row in merged["tokens"].values()) == tokens
    assert all(row[1] == row[0] for row in merged["tokens"].values())  # every token found


def test_treating_every_loop_as_closed_scores_50():
    """The local rule (anything surrounded by a contour is enclosed / inside) is right on every
    closed loop and wrong on every open one."""
    scenes = _scenes_with_both_kinds_of_loop()

    def every_loop_closed(layout):
        return lambda segment, category: (
            ENCLOSED if layout["tokens"].get(segment, "no loop") != "no loop" else category
        )

    def interiors_inside(pred, categories, layout):
        pred = pred.copy()
        pred[(layout["interiors"] > 0) & ~np.isin(pred, list(layout["tokens"]))] = 99
        return pred, {**categories, 99: (INSIDE, False)}

    scores = closure_scores(_merged(scenes, every_loop_closed, interiors_inside))
    assert scores["tokens_closed_loop/right"] == 100 and scores["tokens_open_loop/right"] == 0
    assert scores["token_closure"] == 50
    assert scores["interior_closed_loop/right"] == 100
    assert scores["interior_open_loop/right"] == 0
    assert scores["interior_closure"] == 50
    assert scores["tokens_no_loop/right"] == 100


def test_a_token_is_found_only_with_iou_over_one_half():
    ids, layout = next(s for s in _scenes_with_both_kinds_of_loop() if s[1]["tokens"])
    token = next(iter(layout["tokens"]))
    pred, categories = _as_prediction(ids)
    mask = pred == token
    ys, xs = np.nonzero(mask)
    keep = xs <= np.median(xs) - 1  # under half of the token keeps its id
    pred[ys[~keep], xs[~keep]] = OUTSIDE * 1000
    counts = score_scene(ids, layout, pred, categories)
    where = layout["tokens"][token]
    assert counts["tokens"][where][1] == counts["tokens"][where][0] - 1
    with pytest.raises(ValueError, match="shape"):
        score_scene(ids, layout, pred[:-1], categories)


def test_the_interior_map_marks_the_loops_polygons():
    """Closed-loop interiors are exactly the ``inside`` ground (plus the tokens and contour
    there); open-loop interiors hold no ``inside`` ground."""
    for ids, layout in _scenes_with_both_kinds_of_loop():
        closed = layout["interiors"] == LOOP_INTERIOR["closed loop"]
        opened = layout["interiors"] == LOOP_INTERIOR["open loop"]
        assert not (ids // 1000 == INSIDE)[~closed].any()
        assert not (ids // 1000 == INSIDE)[opened].any()


def test_evaluator_reads_detectron2_outputs_and_the_dataset_recipe(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import COCOPanopticEvaluator

    from rpanoptic.data import generate_synthetic_panoptic, register_synthetic_panoptic
    from rpanoptic.data.synthetic import scene_layout, synthetic_paths
    from rpanoptic.evaluation.enclosure import EnclosureEvaluator, enclosure_evaluator

    root = str(tmp_path / "synthetic_enclosure")
    generate_synthetic_panoptic(root, {"train": 1, "val": 6}, seed=3, spec=SPEC)
    prefix = f"enc_eval_{uuid.uuid4().hex[:6]}"
    register_synthetic_panoptic(root, prefix=prefix, kind="enclosure")
    name = f"{prefix}_val_separated"
    meta = MetadataCatalog.get(name)
    things = meta.thing_dataset_id_to_contiguous_id
    stuff = meta.stuff_dataset_id_to_contiguous_id

    def outputs(record, wrong_open=False):
        layout = scene_layout(root, "val", record["image_id"])
        segments, pred = [], torch.zeros(layout["ids"].shape, dtype=torch.int32)
        for k, segment in enumerate(np.unique(layout["ids"])):
            if segment == 0:
                continue
            category = int(segment) // 1000
            if wrong_open and layout["tokens"].get(int(segment)) == "open loop":
                category = ENCLOSED
            thing = category in things
            pred[torch.from_numpy(layout["ids"] == segment)] = k
            table = things if thing else stuff
            segments.append({"id": k, "isthing": thing, "category_id": table[category]})
        return {"panoptic_seg": (pred, segments)}

    records = DatasetCatalog.get(name)
    evaluator = enclosure_evaluator(name)
    assert isinstance(evaluator, EnclosureEvaluator)
    for wrong_open, expected in ((False, 100.0), (True, 50.0)):
        evaluator.reset()
        for r in records:
            evaluator.process([r], [outputs(r, wrong_open)])
        scores = evaluator.evaluate()["enclosure"]
        assert scores["tokens_open_loop/count"] == 4 and scores["tokens_closed_loop/count"] == 4
        assert scores["token_closure"] == expected
        assert scores["interior_closure"] == 100  # the ground was left right
    # After Detectron2's panoptic evaluator converted the ids in place, the same scores.
    panoptic = COCOPanopticEvaluator(name, str(tmp_path / "pq"))
    panoptic.reset()
    evaluator.reset()
    for r in records:
        out = [outputs(r)]
        panoptic.process([r], out)
        evaluator.process([r], out)
    assert evaluator.evaluate()["enclosure"]["token_closure"] == 100
    # A model that encodes category * label_divisor + instance, without segments_info, on the
    # standard dataset (one contiguous id space).
    standard = EnclosureEvaluator(f"{prefix}_val")
    contiguous = {
        **MetadataCatalog.get(f"{prefix}_val").thing_dataset_id_to_contiguous_id,
        **MetadataCatalog.get(f"{prefix}_val").stuff_dataset_id_to_contiguous_id,
    }
    for r in records:
        layout = scene_layout(root, "val", r["image_id"])
        pred = np.full(layout["ids"].shape, -1, dtype=np.int64)
        for segment in np.unique(layout["ids"]):
            if segment:
                pred[layout["ids"] == segment] = contiguous[segment // 1000] * 1000 + segment % 1000
        standard.process([r], [{"panoptic_seg": (torch.from_numpy(pred), None)}])
    scores = standard.evaluate()["enclosure"]
    assert scores["token_closure"] == 100 and scores["interior_closure"] == 100
    with pytest.raises(ValueError, match="standard dataset"):
        evaluator.process([records[0]], [{"panoptic_seg": (torch.from_numpy(pred), None)}])
    # The curve scenes have no closure scores; a scene drawn by another generator is refused.
    assert enclosure_evaluator("synthetic_panoptic_val_separated") is None
    png = synthetic_paths(root, "val")["panoptic_root"] + "/000001.png"
    from PIL import Image

    Image.fromarray(np.zeros((96, 96, 3), dtype=np.uint8)).save(png)
    with pytest.raises(ValueError, match="another version of the generator"):
        scene_layout(root, "val", 1)

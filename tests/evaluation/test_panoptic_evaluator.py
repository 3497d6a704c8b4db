"""PanopticEvaluator: COCO panoptic PQ plus PQ per category, checked on ground truth fed back
as predictions (PQ 100) and with one category removed (its PQ 0, the others unchanged)."""

import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from rpanoptic.data import SceneSpec, generate_synthetic_panoptic
from rpanoptic.data.synthetic import register_synthetic_panoptic
from rpanoptic.evaluation.panoptic import PanopticEvaluator


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic") / "synthetic_panoptic")
    generate_synthetic_panoptic(root, {"train": 1, "val": 4}, seed=5, spec=SceneSpec(size=96))
    prefix = f"eval_{uuid.uuid4().hex[:6]}"
    register_synthetic_panoptic(root, prefix=prefix)
    return prefix


def _ground_truth_as_prediction(record, meta, drop_category=None):
    rgb = np.asarray(Image.open(record["pan_seg_file_name"]), dtype=np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    seg = np.zeros_like(ids)
    info = []
    for k, s in enumerate(record["segments_info"], start=1):
        category = s["category_id"]  # contiguous, as the standard dataset dicts hold it
        thing = bool(s["isthing"])
        classes = meta.thing_classes if thing else meta.stuff_classes
        if classes[category] == drop_category:
            continue
        seg[ids == s["id"]] = k
        info.append({"id": k, "category_id": category, "isthing": thing})
    return {"panoptic_seg": (torch.as_tensor(seg), info)}


def _evaluate(prefix, tmp_path, drop=None):
    name = f"{prefix}_val"
    meta = MetadataCatalog.get(name)
    evaluator = PanopticEvaluator(name, str(tmp_path))
    evaluator.reset()
    for record in DatasetCatalog.get(name):
        inputs = [{"file_name": record["file_name"], "image_id": record["image_id"]}]
        evaluator.process(inputs, [_ground_truth_as_prediction(record, meta, drop)])
    return evaluator.evaluate()["panoptic_seg"]


def test_ground_truth_scores_100_in_every_category(dataset, tmp_path):
    res = _evaluate(dataset, tmp_path)
    assert res["PQ"] == pytest.approx(100.0)
    per_class = {k: v for k, v in res.items() if k.startswith("PQ/")}
    assert "PQ/curve" in per_class and "PQ/ellipse" in per_class
    present = [v for v in per_class.values() if v > 0]
    assert present and all(v == pytest.approx(100.0) for v in present)


def test_a_missing_category_scores_0_and_leaves_the_others(dataset, tmp_path):
    res = _evaluate(dataset, tmp_path, drop="curve")
    assert res["PQ/curve"] == 0.0 and res["RQ/curve"] == 0.0
    things = [res[f"PQ/{c}"] for c in ("curve", "ellipse", "polygon")]
    assert res["PQ/ellipse"] == pytest.approx(100.0)
    # PQ_th is the mean over the thing categories present in the ground truth.
    present = [v for c, v in zip(("curve", "ellipse", "polygon"), things) if c == "curve" or v > 0]
    assert res["PQ_th"] == pytest.approx(np.mean(present))


def test_mask_probability_stats_exact():
    from rpanoptic.analysis.grouping import mask_probability_stats

    a = np.zeros((6, 6), bool)
    a[1, :] = True  # instance 0: row 1
    b = np.zeros((6, 6), bool)
    b[:, 2] = True  # instance 1: column 2, crossing row 1 at (1, 2) - owned by b there
    a[1, 2] = False
    probs = np.stack([np.full((6, 6), 0.1), np.full((6, 6), 0.2)])
    probs[0][a] = 0.9
    probs[0][b] = 0.4
    rows = mask_probability_stats(probs, [a, b], [(0, 1, 6, 2), (2, 0, 3, 6)])
    assert rows[0] == {"own": pytest.approx(0.9), "other": pytest.approx(0.4), "background": 0.0}
    # instance 1's box is column 2: instance 0 owns none of it, so "other" is NaN
    assert rows[1]["own"] == pytest.approx(0.2) and np.isnan(rows[1]["other"])


def test_instance_grouping_on_a_model(dataset):
    from _detectron import tiny_cfg

    from rpanoptic.analysis.grouping import instance_grouping
    from rpanoptic.modeling import build_model

    torch.manual_seed(0)
    cfg = tiny_cfg("configs/Synthetic/panoptic_fpn_R_18.yaml", "INPUT.MIN_SIZE_TEST", 96)
    model = build_model(cfg)
    name = f"{dataset}_val"
    records = DatasetCatalog.get(name)
    meta = MetadataCatalog.get(name)
    curve = meta.thing_classes.index("curve")
    expected = sum(
        n
        for n in (
            sum(1 for s in r["segments_info"] if s["isthing"] and s["category_id"] == curve)
            for r in records
        )
        if n >= 2
    )
    res = instance_grouping(model, cfg, name, "curve")
    assert res["instances"] == expected > 0
    for key in ("own", "other", "background"):
        assert 0.0 <= res[key] <= 1.0
    assert res["separation"] == pytest.approx(res["own"] - res["other"])
    assert model.training  # restored

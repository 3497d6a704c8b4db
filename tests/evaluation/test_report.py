"""Report pictures: training curves, predictions next to ground truth, steps unfolding."""

import json
import os

import pytest
from _detectron import tiny_cfg
from _panoptic_data import dataset_kwargs, make_dataset, unique_name
from detectron2.data import DatasetCatalog

from rpanoptic.data import register_panoptic_dataset
from rpanoptic.evaluation.report import (
    draw_predictions,
    draw_unfolding,
    plot_training_curves,
    write_report,
)
from rpanoptic.modeling import build_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    paths = make_dataset(str(tmp_path_factory.mktemp("data")), num_images=2)
    name = unique_name()
    num_classes = register_panoptic_dataset(name, **dataset_kwargs(paths))
    opts = [x for kv in num_classes.items() for x in kv]
    cfg = tiny_cfg(
        "configs/COCO-PanopticSegmentation/panoptic_rfpn_R_50_crbp20_1x.yaml",
        *opts,
        "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 64,
    )  # fmt: skip
    return name, cfg, build_model(cfg)


def test_pictures_and_report(setup, tmp_path):
    name, cfg, model = setup
    paths = draw_predictions(model, cfg, name, str(tmp_path), num=2)
    assert len(paths) == 2 and all(os.path.getsize(p) > 1000 for p in paths)
    record = DatasetCatalog.get(name)[0]
    out = str(tmp_path / "unfold.png")
    draw_unfolding(model, cfg, record, [1, 2, 3, 6], out, name)
    assert os.path.getsize(out) > 1000
    assert model.training  # restored

    metrics = tmp_path / "metrics.json"
    rows = [
        {"iteration": i, "total_loss": 3.0 - i, "loss_lcp": 0.1, "loss_mask": 0.5} for i in (0, 1)
    ]
    metrics.write_text("\n".join(json.dumps(r) for r in rows + [{"bbox/AP": 1.0}]))
    keys = plot_training_curves(str(metrics), str(tmp_path / "curves.png"))
    assert keys == ["loss_lcp", "loss_mask", "total_loss"]

    report = write_report(
        str(tmp_path),
        {"panoptic_seg": {"PQ": 12.5, "SQ": 70.0, "RQ": 15.0, "PQ_th": 5.0, "PQ_st": 20.0}},
        {"training curves": str(tmp_path / "curves.png")},
        notes=["Trained somehow."],
        sweep={t: {"panoptic_seg": {"PQ": t / 2, "PQ_th": t, "PQ_st": 0.0}} for t in (1, 4, 8)},
        trained=4,
    )
    text = open(report).read()
    assert "| all | 12.5 | 70.0 | 15.0 |" in text and "`curves.png`" in text
    assert "Trained somehow." in text
    assert "| t | 1 | 4 (N) | 8 |" in text and "| PQ_th | 1.0 | 4.0 | 8.0 |" in text
    assert "Closure" not in text  # no closure scores on the curve scenes

    closure = {"token_closure": 61.0, "interior_closure": 55.5}
    closure.update({"tokens_closed_loop/right": 80.0, "tokens_open_loop/right": 42.0})
    final = {"PQ": 40.0, "PQ/enclosed": 30.0, "SQ/enclosed": 75.0, "RQ/enclosed": 40.0}
    report = write_report(
        str(tmp_path),
        {"panoptic_seg": final, "enclosure": closure},
        {},
        sweep={
            t: {
                "panoptic_seg": {"PQ": t, "PQ/enclosed": 2.0 * t},
                "enclosure": {"token_closure": 50.0 + t},
            }
            for t in (1, 4)
        },
        trained=4,
    )
    text = open(report).read()
    assert "| enclosed | 30.0 | 75.0 | 40.0 |" in text
    assert "tokens 61.0 (closed loops 80.0, open loops 42.0), ground 55.5" in text
    assert "| PQ/enclosed | 2.0 | 8.0 |" in text and "| token_closure | 51.0 | 54.0 |" in text

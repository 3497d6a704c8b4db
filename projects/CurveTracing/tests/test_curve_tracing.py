"""The curve-tracing toy demo: its data (curve_tracing.task) and the script
projects/CurveTracing/demo.py end to end with tiny settings, both modes, all outputs."""

import csv
import importlib.util
import os

import numpy as np
import pytest
from curve_tracing.task import make_curves

TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo.py")


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("demo_recurrence", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_curves_stay_inside_and_apart():
    x, y, m = make_curves(20, 20, np.random.default_rng(0), curves=(2, 3))
    assert x.shape == (20, 2, 20, 20) and y.shape == m.shape == (20, 20, 20)
    assert (m[:, 0].sum() + m[:, -1].sum() + m[:, :, 0].sum() + m[:, :, -1].sum()) == 0
    assert ((y > 0) <= (m > 0)).all() and (y.sum((1, 2)) < m.sum((1, 2))).all()
    assert (x[:, 1].sum((1, 2)) == 1).all() and ((x[:, 1] > 0) <= (y > 0)).all()


def test_main_tiny(demo, tmp_path):
    argv = [
        "--iters", "3", "--size", "16", "--curves", "2", "--channels", "8", "--batch", "4",
        "--timesteps", "2", "--eval-steps", "3", "--neumann-steps", "2",
        "--train-samples", "16", "--val-samples", "8", "--output-dir", str(tmp_path),
    ]  # fmt: skip
    assert demo.main(argv) == 0
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    modes = {r["mode"] for r in rows}
    assert {"bptt", "crbp", "trivial"} <= modes
    for r in rows:
        assert 0.0 <= float(r["val_iou"]) <= 1.0
    assert {int(r["steps"]) for r in rows if r["mode"] == "crbp"} == {1, 2, 3}
    for name in ("iou_vs_steps.png", "unfolding.png", "training.png"):
        assert (tmp_path / name).stat().st_size > 0

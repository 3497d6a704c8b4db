"""run_demo end to end on a tiny registered dataset: trains, evaluates PQ, writes the report."""

import os

import pytest
from _detectron import ROOT, TINY
from _panoptic_data import dataset_kwargs, make_dataset, unique_name

from rpanoptic.data import register_panoptic_dataset
from rpanoptic.engine.demo import run_demo, sweep_counts
from rpanoptic.engine.setup import get_rpanoptic_cfg


def test_sweep_counts_reach_past_n():
    assert sweep_counts(10) == [1, 2, 5, 10, 20, 30]


@pytest.mark.slow
def test_run_demo_writes_report(tmp_path):
    paths = make_dataset(str(tmp_path / "data"), num_images=3)
    name = unique_name()
    opts = list(TINY)
    for key, value in register_panoptic_dataset(name, **dataset_kwargs(paths)).items():
        opts += [key, value]
    opts += ["DATASETS.TRAIN", f"('{name}_separated',)", "DATASETS.TEST", f"('{name}_separated',)"]
    opts += ["OUTPUT_DIR", str(tmp_path / "demo"), "DATALOADER.NUM_WORKERS", 0]
    opts += ["SOLVER.MAX_ITER", 2, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.STEPS", "()"]
    opts += ["SOLVER.BASE_LR", 0.01, "SOLVER.WARMUP_ITERS", 0, "TEST.EVAL_PERIOD", 0]
    opts += ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", 64, "INPUT.MASK_FORMAT"]
    opts += ["bitmask", "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 64]
    config = os.path.join(
        ROOT, "configs/COCO-PanopticSegmentation/panoptic_rfpn_R_50_crbp20_1x.yaml"
    )
    cfg = get_rpanoptic_cfg(config, [str(o) for o in opts])
    files = run_demo(cfg, counts=[1, 3], num_pictures=2)
    for what in ("metrics", "training curves", "PQ against inference steps", "steps unfolding"):
        assert os.path.getsize(files[what]) > 0, what
    assert "prediction 2" in files
    report = open(files["report"]).read()
    assert "| all |" in report and "unfolding.png" in report

"""tools/train_net.py end to end on a tiny registered COCO-panoptic dataset: train (with the
LCP hook and its diagnostics), evaluate PQ, and run the timestep sweep."""

import csv
import importlib.util
import json
import os

import pytest
from _detectron import RFPN, ROOT, TINY
from _panoptic_data import dataset_kwargs, make_dataset, unique_name

from rpanoptic.data import register_panoptic_dataset


def _train_net():
    spec = importlib.util.spec_from_file_location(
        "train_net", os.path.join(ROOT, "tools", "train_net.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    paths = make_dataset(str(tmp_path_factory.mktemp("data")), num_images=4)
    name = unique_name()
    num_classes = register_panoptic_dataset(name, **dataset_kwargs(paths))
    opts = []
    for split in ("TRAIN", "TEST"):
        opts += [f"DATASETS.{split}", f"('{name}_separated',)"]
    for key, value in num_classes.items():
        opts += [key, value]
    return opts


@pytest.mark.slow
def test_train_then_evaluate_then_sweep(dataset, tmp_path):
    train_net = _train_net()
    out = str(tmp_path / "run")
    common = [*TINY, *dataset, "OUTPUT_DIR", out, "DATALOADER.NUM_WORKERS", 0]
    common += ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", 64]
    common += ["INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 64, "INPUT.MASK_FORMAT", "bitmask"]
    train = ["SOLVER.MAX_ITER", 3, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.BASE_LR", 0.01]
    train += ["SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", 0, "TEST.EVAL_PERIOD", 0]
    train += ["MODEL.RECURRENT.DIAGNOSTICS_PERIOD", 1]
    args = train_net.parse_args(
        ["--config-file", os.path.join(ROOT, RFPN), *map(str, common + train)]
    )
    train_net.main(args)

    with open(os.path.join(out, "metrics.json")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    training = [r for r in records if "total_loss" in r]
    assert training and training[-1]["iteration"] == 2 and training[-1]["loss_lcp"] >= 0
    last = training[-1]
    assert "recurrent/backbone.rfpn.p2.recurrence/spectral_radius" in last
    assert 0 < last["recurrent/backbone.rfpn.p2.recurrence/spectral_radius"] < 2
    final = os.path.join(out, "model_final.pth")
    assert os.path.exists(final)

    weights = ["MODEL.WEIGHTS", final]
    argv = ["--config-file", os.path.join(ROOT, RFPN), "--eval-only", *map(str, common + weights)]
    results = train_net.main(train_net.parse_args(argv))
    assert {"panoptic_seg", "bbox", "segm", "sem_seg"} <= set(results)
    assert 0 <= results["panoptic_seg"]["PQ"] <= 100

    argv = argv[:3] + ["--eval-timesteps", "1,4"] + argv[3:]
    sweep = train_net.main(train_net.parse_args(argv))
    assert set(sweep) == {1, 4}
    csv_path = os.path.join(out, "timestep_sweep", dataset[1].strip("(),'"), "timestep_sweep.csv")
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["timesteps"]) for r in rows] == [1, 4]
    assert all(0 <= float(r["PQ"]) <= 100 for r in rows)
    assert os.path.exists(csv_path.replace(".csv", ".png"))


def test_eval_timesteps_needs_eval_only():
    train_net = _train_net()
    with pytest.raises(SystemExit):
        train_net.parse_args(["--config-file", RFPN, "--eval-timesteps", "1,5"])
    with pytest.raises(ValueError, match="--eval-timesteps 'a,b'"):
        train_net.parse_args(["--config-file", RFPN, "--eval-only", "--eval-timesteps", "a,b"])

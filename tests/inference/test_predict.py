"""tools/predict.py and rpanoptic.inference on a tiny model with random weights: overlays, the
COCO panoptic pair that panopticapi scores, the CSV of time and steps, the unfolding strip, a
video, and the errors (unreadable image skipped, empty glob, checkpoint of another model)."""

import csv
import json
import os

import numpy as np
import pytest
import torch
from _detectron import FF, RFPN, tiny_cfg
from detectron2.checkpoint import DetectionCheckpointer
from PIL import Image

from rpanoptic.inference import PredictOptions, Predictor, expand_inputs, predict_files
from rpanoptic.inference.panoptic_files import ids_to_rgb
from rpanoptic.inference.predictor import predict_video
from rpanoptic.modeling import build_model

# Random weights score nothing above the default thresholds: keep every segment, so that the
# predictions hold things and stuff (panopticapi averages over both kinds)
STUFF = ["MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT", 1, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0]
STUFF += ["MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", 0.0]


def _weights(tmp_path, config):
    torch.manual_seed(0)
    name = os.path.splitext(os.path.basename(config))[0]
    DetectionCheckpointer(build_model(tiny_cfg(config)), save_dir=str(tmp_path)).save(name)
    return str(tmp_path / f"{name}.pth")


def _images(folder, count=2, size=96):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size + 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"img{i}.png"))
    return folder


def test_ids_to_rgb_is_the_coco_panoptic_encoding():
    ids = np.array([[0, 1, 256], [65536 + 2 * 256 + 3, 7, 1000]])
    rgb = ids_to_rgb(ids).astype(np.int64)
    decoded = rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]
    np.testing.assert_array_equal(decoded, ids)


@pytest.mark.slow
def test_predict_writes_overlays_panoptic_pair_csv_and_unfolding(tmp_path, caplog):
    from panopticapi.evaluation import pq_compute

    folder = _images(str(tmp_path / "in"))
    with open(os.path.join(folder, "broken.png"), "w") as f:
        f.write("not an image")
    cfg = tiny_cfg(RFPN, "MODEL.WEIGHTS", _weights(tmp_path, RFPN), *STUFF)
    out = str(tmp_path / "out")
    summary = predict_files(
        Predictor(cfg), expand_inputs([folder]), out, PredictOptions(unfold=(1, 3), progress=False)
    )
    assert summary["images"] == 2 and summary["skipped"] == [os.path.join(folder, "broken.png")]
    assert "broken.png" in caplog.text and "cannot be read as an image" in caplog.text
    for name in ("img0", "img1"):
        overlay = Image.open(os.path.join(out, name + ".png"))
        assert overlay.size == (112, 96)  # the input's size, not the resized test size
        assert os.path.getsize(os.path.join(out, name + "_unfold.png")) > 5000
    with open(summary["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [os.path.basename(r["file"]) for r in rows] == ["img0.png", "img1.png"]
    layers = [k for k in rows[0] if k.startswith("steps/")]
    assert layers == [f"steps/backbone.rfpn.{p}.recurrence" for p in ("p2", "p3", "p4", "p5")]
    assert all(float(r[k]) == 3 for r in rows for k in layers)  # TIMESTEPS 3, no halting
    assert all(float(r["seconds"]) > 0 for r in rows)

    with open(summary["json"]) as f:
        data = json.load(f)
    assert len(data["annotations"]) == 2
    segments = [s for a in data["annotations"] for s in a["segments_info"]]
    assert {s["category_id"] <= 90 for s in segments} == {True, False}  # things and stuff
    coco_ids = {c["id"] for c in data["categories"]}
    assert len(coco_ids) == 133  # COCO's 80 things and 53 stuff, from DATASETS.TEST's metadata
    for annotation in data["annotations"]:
        assert all(s["category_id"] in coco_ids for s in annotation["segments_info"])
    # panopticapi reads the pair (a segment missing from either side raises): scored against
    # itself, every category present has PQ 1.
    pan = os.path.join(out, "panoptic")
    result = pq_compute(summary["json"], summary["json"], pan, pan)
    assert result["All"]["pq"] == pytest.approx(1.0)


def test_halting_reports_fewer_steps_per_layer(tmp_path):
    folder = _images(str(tmp_path / "in"), count=1)
    weights = _weights(tmp_path, RFPN)
    cfg = tiny_cfg(RFPN, "MODEL.WEIGHTS", weights, "MODEL.RECURRENT.TEST_TIMESTEPS", 6)
    halting = tiny_cfg(RFPN, "MODEL.WEIGHTS", weights, "MODEL.RECURRENT.TEST_TIMESTEPS", 6)
    halting.MODEL.RECURRENT.HALT_TOL = 10.0  # any relative change counts as converged
    image = np.asarray(Image.open(os.path.join(folder, "img0.png")))[:, :, ::-1]
    full, early = Predictor(cfg)(image), Predictor(halting)(image)
    assert set(full.steps) == set(early.steps) and len(full.steps) == 4
    assert all(v == 6 for v in full.steps.values())
    assert all(v < 6 for v in early.steps.values())


def test_video_in_gives_video_out(tmp_path):
    import cv2

    path = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 5, (80, 64))
    rng = np.random.default_rng(1)
    for _ in range(3):
        writer.write(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))
    writer.release()
    cfg = tiny_cfg(FF, "MODEL.WEIGHTS", _weights(tmp_path, FF))
    summary = predict_video(Predictor(cfg), path, str(tmp_path / "out"), progress=False)
    video = cv2.VideoCapture(summary["video"])
    frames = 0
    while video.read()[0]:
        frames += 1
    assert frames == 3 and summary["images"] == 3
    assert (video.get(cv2.CAP_PROP_FRAME_WIDTH), video.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (80, 64)


def test_errors_name_the_input_and_the_keys(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--input 'nothing/\*.png' matches no image"):
        expand_inputs(["nothing/*.png"])
    ff = _weights(tmp_path, FF)
    with pytest.raises(ValueError, match=r"does not match.*missing from the checkpoint: backbone"):
        Predictor(tiny_cfg(RFPN, "MODEL.WEIGHTS", ff))
    with pytest.raises(ValueError, match="No weights"):
        Predictor(tiny_cfg(RFPN))
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        Predictor(tiny_cfg(RFPN, "MODEL.WEIGHTS", str(tmp_path / "missing.pth")))


@pytest.mark.slow
def test_predict_script_end_to_end(tmp_path):
    from _experiments import ROOT, run_python

    folder = _images(str(tmp_path / "in"), count=1)
    weights = _weights(tmp_path, RFPN)
    out = str(tmp_path / "out")
    tiny = [str(v) for v in __import__("_detectron").TINY]
    args = [os.path.join(ROOT, "tools", "predict.py"), "--config-file", RFPN, "--input"]
    args += [os.path.join(folder, "*.png"), "--output", out, "--quiet", "--timesteps", "2"]
    done = run_python(dict(os.environ), *args, *tiny, "MODEL.WEIGHTS", weights)
    assert "1 images" in done.stdout and "2.00 steps on average" in done.stdout
    assert os.path.isfile(os.path.join(out, "img0.png"))


def test_predict_speed_times_each_setting_on_the_same_images_and_reports_their_steps(tmp_path):
    """The speed table behind tools/benchmark.py predict: per setting, the images timed after
    the warm-up ones and the mean steps. A tolerance of 100 (a relative change no step after
    the first reaches) stops every layer after its second step: the first, from h = 0, is an
    unbounded relative change. No halting runs N; a feed-forward model has no steps."""
    from rpanoptic.benchmark.predict_speed import predict_speed

    paths = expand_inputs([_images(str(tmp_path / "in"), count=3)])
    weights = _weights(tmp_path, RFPN)
    cfgs = {
        "no halting": tiny_cfg(RFPN, "MODEL.WEIGHTS", weights),
        "halt_tol 100": tiny_cfg(RFPN, "MODEL.WEIGHTS", weights, "MODEL.RECURRENT.HALT_TOL", 100.0),
        "baseline": tiny_cfg(FF, "MODEL.WEIGHTS", _weights(tmp_path, FF)),
    }
    rows = {r["setting"]: r for r in predict_speed(cfgs, paths, warmup=1)}
    assert list(rows) == ["no halting", "halt_tol 100", "baseline"]
    n = cfgs["no halting"].MODEL.RECURRENT.TIMESTEPS
    assert n > 2
    assert [r["steps"] for r in rows.values()] == [n, 2.0, 0.0]
    for r in rows.values():
        assert r["images"] == 2  # 3 images, 1 warm-up
        assert r["s_per_image"] > 0 and abs(r["images_per_s"] * r["s_per_image"] - 1) < 1e-9


@pytest.mark.slow
def test_setting_quality_scores_each_setting_and_counts_its_steps(tmp_path):
    """PQ per inference setting on a registered dataset: halting at 100 stops every layer
    after its second step, so it must score exactly what TEST_TIMESTEPS 2 scores, and count 2
    steps; the trained N counts N."""
    import uuid

    from rpanoptic.benchmark.predict_speed import setting_quality
    from rpanoptic.data import SceneSpec, generate_synthetic_panoptic
    from rpanoptic.data.synthetic import register_synthetic_panoptic

    root = str(tmp_path / "synthetic_panoptic")
    generate_synthetic_panoptic(root, {"train": 1, "val": 3}, seed=5, spec=SceneSpec(size=96))
    prefix = f"quality_{uuid.uuid4().hex[:6]}"
    register_synthetic_panoptic(root, prefix=prefix)
    config = "configs/Synthetic/panoptic_rfpn_R_18_crbp.yaml"
    classes = ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5]  # the synthetic set's (TINY has 4)
    torch.manual_seed(0)
    weights = str(tmp_path / "w.pth")
    torch.save({"model": build_model(tiny_cfg(config, *classes)).state_dict()}, weights)
    common = [*classes, "MODEL.WEIGHTS", weights, "DATASETS.TEST", (f"{prefix}_val_separated",)]
    common += STUFF
    common += ["INPUT.MIN_SIZE_TEST", 96, "INPUT.MAX_SIZE_TEST", 96]
    cfgs = {
        "N": tiny_cfg(config, *common),
        "halt_tol 100": tiny_cfg(config, *common, "MODEL.RECURRENT.HALT_TOL", 100.0),
        "t = 2": tiny_cfg(config, *common, "MODEL.RECURRENT.TEST_TIMESTEPS", 2),
    }
    quality = setting_quality(cfgs)
    assert quality["N"]["eval_steps"] == cfgs["N"].MODEL.RECURRENT.TIMESTEPS == 3
    assert quality["halt_tol 100"]["eval_steps"] == quality["t = 2"]["eval_steps"] == 2
    for key in ("PQ", "PQ_th", "PQ_st"):
        assert quality["halt_tol 100"][key] == quality["t = 2"][key]
        assert 0 <= quality["N"][key] <= 100

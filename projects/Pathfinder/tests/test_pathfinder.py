"""The Pathfinder generator: determinism, balanced and verified labels at every difficulty,
the label check catching a wrong label, and the files it writes."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from pathfinder import (
    DIFFICULTY,
    PathfinderSpec,
    check_label,
    generate_pathfinder,
    make_example,
)
from PIL import Image

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_same_seed_same_example_other_seed_other_example():
    spec = PathfinderSpec()
    a, b = make_example(spec, 3, 7), make_example(spec, 3, 7)
    assert np.array_equal(a["image"], b["image"]) and a["label"] == b["label"]
    assert not np.array_equal(a["image"], make_example(spec, 4, 7)["image"])


@pytest.mark.parametrize("level", sorted(DIFFICULTY))
def test_labels_are_balanced_and_verified_by_the_rendered_paths(level):
    spec = PathfinderSpec(segments=DIFFICULTY[level])
    examples = [make_example(spec, 0, i) for i in range(40)]
    assert sum(e["label"] for e in examples) == 20
    for e in examples:
        assert check_label(spec, e)
        assert e["image"].dtype == np.uint8 and e["image"].shape == (spec.size, spec.size)
        # The target mask is path 0, which the first dot starts; every path is in the image.
        x, y = np.round(e["dots"][0]).astype(int)
        assert e["target"][max(0, y - 2) : y + 3, max(0, x - 2) : x + 3].any()
        assert all((e["image"][m] == 255).all() for m in e["paths"])


def test_the_distance_between_the_dots_does_not_tell_the_label():
    """Negatives' dots are drawn as far apart as positives' would be: no threshold on the
    distance beats chance by much (with path 1 drawn anywhere, one reached 0.75)."""
    spec = PathfinderSpec(size=32, segments=6, snakes=3, dash=2.0, gap=1.0, dot_radius=0.8)
    examples = [make_example(spec, 5, i) for i in range(300)]
    distance = np.array([np.linalg.norm(e["dots"][1] - e["dots"][0]) for e in examples])
    label = np.array([e["label"] for e in examples])
    best = max(((distance < t) == label).mean() for t in np.unique(distance))
    assert best < 0.62, best
    assert all(check_label(spec, e) for e in examples)


def test_the_check_catches_a_wrong_label():
    spec = PathfinderSpec(segments=9)
    for i in range(20):
        example = make_example(spec, 1, i)
        flipped = dict(example, label=1 - example["label"])
        assert not check_label(spec, flipped)


def test_crossings_are_common_so_pixels_alone_do_not_tell():
    """In many negatives path 0 touches another path: connectivity of the bright pixels would
    call them positive; only following each path tells."""
    from scipy import ndimage

    spec = PathfinderSpec(segments=9)
    touching = 0
    for i in range(0, 40, 2):  # negatives
        e = make_example(spec, 2, i)
        grown = ndimage.binary_dilation(e["target"], iterations=1)
        touching += any((grown & m).any() for m in e["paths"][1:])
    assert touching >= 5, touching


def test_generate_writes_images_masks_labels_and_skips_a_repeat(tmp_path):
    spec = PathfinderSpec(size=32, segments=4, snakes=2, dash=3.0, gap=1.5)
    root = str(tmp_path / "pf")
    assert generate_pathfinder(root, {"train": 6, "val": 4}, spec, seed=1)[1]
    with open(os.path.join(root, "train", "labels.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["0", "1"] * 3
    image = np.asarray(Image.open(os.path.join(root, "train", rows[1]["file"])))
    assert np.array_equal(image, make_example(spec, 1000 * 1 + 0, 1)["image"])
    assert os.path.isfile(os.path.join(root, "val", "000003_target.png"))
    assert not generate_pathfinder(root, {"train": 6, "val": 4}, spec, seed=1)[1]


def test_generate_with_workers_writes_the_same_files(tmp_path):
    spec = PathfinderSpec(size=32, segments=4, snakes=2, dash=3.0, gap=1.5)
    counts = {"train": 9, "val": 5}
    serial, parallel = str(tmp_path / "one"), str(tmp_path / "three")
    generate_pathfinder(serial, counts, spec, seed=4)
    assert generate_pathfinder(parallel, counts, spec, seed=4, workers=3)[1]
    names = sorted(
        os.path.relpath(os.path.join(d, f), serial) for d, _, fs in os.walk(serial) for f in fs
    )
    assert len(names) == 2 * (9 + 5) + 2 + 1  # images and targets, two CSVs, the recipe
    for name in names:
        with open(os.path.join(serial, name), "rb") as a, open(
            os.path.join(parallel, name), "rb"
        ) as b:
            assert a.read() == b.read(), name
    with pytest.raises(ValueError, match="workers"):
        generate_pathfinder(str(tmp_path / "none"), counts, spec, workers=0)


def test_labels_csv_holds_the_dot_centres(tmp_path):
    spec = PathfinderSpec(size=32, segments=4, snakes=2, dash=3.0, gap=1.5)
    root = str(tmp_path / "pf")
    generate_pathfinder(root, {"train": 4}, spec, seed=2)
    with open(os.path.join(root, "train", "labels.csv")) as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        dots = make_example(spec, 2000, i)["dots"]
        got = [[float(row["x0"]), float(row["y0"])], [float(row["x1"]), float(row["y1"])]]
        assert np.allclose(got, dots, atol=0.01), i


def test_bad_spec_names_the_field():
    with pytest.raises(ValueError, match="segments=0"):
        PathfinderSpec(segments=0).validate()
    with pytest.raises(ValueError, match="no path of 40 dashes fits"):
        make_example(PathfinderSpec(size=16, segments=40, dash=8.0, margin=3), 0, 0)


@pytest.mark.slow
def test_prepare_script(tmp_path):
    out = subprocess.run(
        [sys.executable, os.path.join(PROJECT, "prepare_data.py"), "--root",
         str(tmp_path), "--train", "4", "--val", "2", "--size", "48"],
        capture_output=True, text=True, cwd=PROJECT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert os.path.isfile(tmp_path / "easy_48px_seed0" / "generator.json")


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    spec = PathfinderSpec(size=24, segments=2, snakes=2, dash=3.0, gap=1.5, margin=2)
    root = str(tmp_path_factory.mktemp("pf") / "tiny")
    generate_pathfinder(root, {"train": 32, "val": 16}, spec, seed=0)
    return root


def _run(**kw):
    from pathfinder.train import PathfinderRun

    base = dict(channels=8, kernel_size=3, timesteps=3, neumann_steps=3, batch=8)
    return PathfinderRun(**{**base, **kw})


@pytest.mark.parametrize("model", ["hgru", "ff"])
def test_interrupted_training_resumes_to_the_same_weights(tiny_set, tmp_path, model, monkeypatch):
    import torch
    from pathfinder.train import build_model, load_split, train

    data = load_split(tiny_set, "train")
    whole = build_model(_run(model=model, iters=8, checkpoint_period=4))
    train(whole, data, _run(model=model, iters=8, checkpoint_period=4), str(tmp_path / "a"))
    run = _run(model=model, iters=8, checkpoint_period=4)
    step, calls = torch.optim.Adam.step, []

    def dying_step(self, *a, **k):  # the 5th step dies: the checkpoint of iteration 4 is kept
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train(build_model(run), data, run, str(tmp_path / "b"), log=lambda s: None)
    monkeypatch.setattr(torch.optim.Adam, "step", step)
    resumed = build_model(run)
    history = train(resumed, data, run, str(tmp_path / "b"), log=lambda s: None)
    assert history[-1]["iteration"] == 8
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="other settings"):
        train(build_model(run), data, _run(model=model, iters=9), str(tmp_path / "b"))
    # A checkpoint of another data set is not resumed either.
    with pytest.raises(ValueError, match="another data set"):
        train(build_model(run), data, run, str(tmp_path / "b"), data_recipe={"seed": 9})


def test_evaluate_sweeps_steps_like_separate_runs_and_reports_stability(tiny_set):
    import torch
    from pathfinder.train import build_model, evaluate, load_split

    data = load_split(tiny_set, "val")
    model = build_model(_run(model="hgru")).eval()
    result = evaluate(model, data, [1, 3, 9])
    x, y = data.x, data.y
    for t, acc in result["accuracy"].items():
        with torch.no_grad(), model.recurrence.using(test_timesteps=t):
            alone = ((model(x) > 0).float() == y).float().mean().item()
        assert acc == pytest.approx(alone), t
    assert result["drift"] > 0 and 0 < result["spectral_radius"] < 2


def test_missing_or_corrupt_split_names_the_file(tiny_set, tmp_path):
    import shutil

    from pathfinder.train import load_split

    with pytest.raises(FileNotFoundError, match="prepare_data.py"):
        load_split(str(tmp_path), "train")
    copy = str(tmp_path / "copy")
    shutil.copytree(tiny_set, copy)
    with open(os.path.join(copy, "val", "000001.png"), "wb") as f:
        f.write(b"not a png")
    with pytest.raises(ValueError, match="000001.png cannot be read"):
        load_split(copy, "val")


def test_train_script_end_to_end(tiny_set, tmp_path):
    import importlib.util
    import json

    path = os.path.join(PROJECT, "train.py")
    spec = importlib.util.spec_from_file_location("train_pathfinder", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = str(tmp_path / "run")
    argv = ["--data", tiny_set, "--iters", "4", "--channels", "8", "--timesteps", "2"]
    argv += ["--neumann-steps", "2", "--batch", "4", "--eval-steps", "1,2,4", "--output-dir", out]
    assert tool.main(argv) == 0
    result = json.load(open(os.path.join(out, "result.json")))
    assert set(result["accuracy"]) == {"1", "2", "4"} and result["params"] > 0
    assert result["saved_mb"] > 0 and os.path.isfile(os.path.join(out, "checkpoint.pth"))
    assert tool.main(["--data", str(tmp_path / "none"), "--output-dir", out + "2"]) == 2


@pytest.fixture(scope="module")
def tiny_trace_set(tmp_path_factory):
    spec = PathfinderSpec(size=24, segments=3, snakes=2, dash=3.0, gap=1.5, margin=2)
    root = str(tmp_path_factory.mktemp("pf") / "trace")
    generate_pathfinder(root, {"train": 16, "val": 8}, spec, seed=3)
    return root, spec


def test_trace_split_holds_image_cue_target_and_probe(tiny_trace_set):
    import torch
    from pathfinder.train import load_split

    root, spec = tiny_trace_set
    data = load_split(root, "val", task="trace")
    assert data.x.shape == (8, 2, 24, 24) and len(data) == 8
    for i in range(8):
        e = make_example(spec, 3000 + 1, i)  # val is the second split in sorted order
        assert np.array_equal(data.x[i, 0].numpy() > 0.5, e["image"] > 0)
        assert np.array_equal(data.target[i, 0].numpy() > 0.5, e["target"])
        (x0, y0), (x1, y1) = np.round(e["dots"]).astype(int)
        assert data.x[i, 1, y0, x0] == 1 and data.probe[i, 0, y1, x1]
        # The cue is a disk on the first dot only; the probe a slightly larger one on the second.
        assert data.x[i, 1].sum() <= np.pi * (spec.dot_radius + 1) ** 2
        assert not data.x[i, 1, y1, x1] and not data.probe[i, 0, y0, x0]
        assert data.y[i] == e["label"]
    label = load_split(root, "val")
    assert label.x.shape == (8, 1, 24, 24) and label.target is None
    assert torch.equal(label.x[:, 0], data.x[:, 0])


def test_trace_split_of_an_old_set_says_to_make_it_again(tiny_trace_set, tmp_path):
    import shutil

    from pathfinder.train import load_split

    copy = str(tmp_path / "old")
    shutil.copytree(tiny_trace_set[0], copy)
    table = os.path.join(copy, "val", "labels.csv")
    with open(table) as f:
        rows = list(csv.DictReader(f))
    with open(table, "w", newline="") as f:  # the format before the dot centres
        writer = csv.DictWriter(f, fieldnames=["file", "label", "segments"])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("file", "label", "segments")} for r in rows)
    with pytest.raises(ValueError, match="no dot centres.*prepare_data.py"):
        load_split(copy, "val", task="trace")
    with pytest.raises(ValueError, match="task='dense'"):
        load_split(copy, "val", task="dense")


def test_trace_label_logit_is_the_largest_pixel_logit_on_the_second_dot(tiny_trace_set):
    import torch
    import torch.nn.functional as F
    from pathfinder.train import _loss, build_model, label_logits, load_split

    data = load_split(tiny_trace_set[0], "val", task="trace")
    run = _run(model="ff", task="trace")
    model = build_model(run).eval()
    logits, dense = label_logits(model, data)
    assert dense.shape == (8, 1, 24, 24)
    for i in range(8):
        assert logits[i] == dense[i][data.probe[i]].max()
    # The loss: the label's BCE plus the pixel BCE where the cued path, the other bright pixels
    # and the background weigh a third each.
    t = data.target
    path, other = t > 0.5, (data.x[:, :1] > 0.5) & (t < 0.5)
    background = ~(path | other)
    assert other.any() and path.any()
    bce = F.binary_cross_entropy_with_logits(dense, t, reduction="none")
    pixels = sum(bce[g].sum() / g.sum() for g in (path, other, background)) / 3
    expected = F.binary_cross_entropy_with_logits(logits, data.y) + pixels
    with torch.no_grad():
        assert _loss(model, data, run)[0].item() == pytest.approx(expected.item(), rel=1e-5)


def test_trace_evaluation_reports_path_iou_per_step_count(tiny_trace_set):
    import torch
    from pathfinder.train import build_model, evaluate, label_logits, load_split

    data = load_split(tiny_trace_set[0], "val", task="trace")
    model = build_model(_run(model="hgru", task="trace")).eval()
    result = evaluate(model, data, [1, 4])
    for t in (1, 4):
        with torch.no_grad(), model.recurrence.using(test_timesteps=t):
            logits, dense = label_logits(model, data)
        pred, true = dense > 0, data.target > 0.5
        iou = (pred & true).flatten(1).sum(1) / (pred | true).flatten(1).sum(1).clamp_min(1)
        assert result["path_iou"][t] == pytest.approx(iou.mean().item(), abs=1e-6)
        acc = ((logits > 0).float() == data.y).float().mean().item()
        assert result["accuracy"][t] == pytest.approx(acc)


@pytest.mark.slow
def test_a_tiny_trace_run_beats_chance_on_short_paths(tmp_path):
    """Two-dash paths fit a small CNN's receptive field: 300 steps (seconds) learn them."""
    import torch
    from pathfinder.train import PathfinderRun, build_model, evaluate, load_split, train

    torch.manual_seed(0)
    spec = PathfinderSpec(size=24, segments=2, snakes=2, dash=3.0, gap=1.5, margin=2)
    root = str(tmp_path / "short")
    generate_pathfinder(root, {"train": 600, "val": 200}, spec, seed=0)
    run = PathfinderRun(task="trace", model="ff", channels=8, batch=16, iters=300, lr=1e-2)
    model = build_model(run)
    train(model, load_split(root, "train", "trace"), run, str(tmp_path / "run"), log=print)
    accuracy = evaluate(model, load_split(root, "val", "trace"), [1])["accuracy"][1]
    assert accuracy > 0.8, accuracy


def test_scaled_spec_grows_lengths_with_the_image():
    from pathfinder import PathfinderSpec

    assert PathfinderSpec.scaled(64, "easy", 4) == PathfinderSpec()  # the defaults are 64 px
    small = PathfinderSpec.scaled(32, "hard", 3)
    assert (small.segments, small.snakes, small.dash, small.gap) == (14, 3, 2.0, 1.0)
    assert (small.width, small.dot_radius, small.margin) == (1, 0.8, 2)  # width, margin >= 1

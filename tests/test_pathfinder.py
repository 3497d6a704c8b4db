"""The Pathfinder generator: determinism, balanced and verified labels at every difficulty,
the label check catching a wrong label, and the files it writes."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rpanoptic.pathfinder import (
    DIFFICULTY,
    PathfinderSpec,
    check_label,
    generate_pathfinder,
    make_example,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_bad_spec_names_the_field():
    with pytest.raises(ValueError, match="segments=0"):
        PathfinderSpec(segments=0).validate()
    with pytest.raises(ValueError, match="no path of 40 dashes fits"):
        make_example(PathfinderSpec(size=16, segments=40, dash=8.0, margin=3), 0, 0)


def test_prepare_script(tmp_path):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "datasets", "prepare_pathfinder.py"), "--root",
         str(tmp_path), "--train", "4", "--val", "2", "--size", "48"],
        capture_output=True, text=True, cwd=ROOT,
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
    from rpanoptic.pathfinder.train import PathfinderRun

    base = dict(channels=8, kernel_size=3, timesteps=3, neumann_steps=3, batch=8)
    return PathfinderRun(**{**base, **kw})


@pytest.mark.parametrize("model", ["hgru", "ff"])
def test_interrupted_training_resumes_to_the_same_weights(tiny_set, tmp_path, model, monkeypatch):
    import torch

    from rpanoptic.pathfinder.train import build_model, load_split, train

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


def test_evaluate_sweeps_steps_like_separate_runs_and_reports_stability(tiny_set):
    import torch

    from rpanoptic.pathfinder.train import build_model, evaluate, load_split

    data = load_split(tiny_set, "val")
    model = build_model(_run(model="hgru")).eval()
    result = evaluate(model, data, [1, 3, 9])
    x, y = data
    for t, acc in result["accuracy"].items():
        with torch.no_grad(), model.recurrence.using(test_timesteps=t):
            alone = ((model(x) > 0).float() == y).float().mean().item()
        assert acc == pytest.approx(alone), t
    assert result["drift"] > 0 and 0 < result["spectral_radius"] < 2


def test_missing_or_corrupt_split_names_the_file(tiny_set, tmp_path):
    import shutil

    from rpanoptic.pathfinder.train import load_split

    with pytest.raises(FileNotFoundError, match="prepare_pathfinder.py"):
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

    path = os.path.join(ROOT, "tools", "train_pathfinder.py")
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

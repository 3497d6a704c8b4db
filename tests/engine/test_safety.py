"""Fault injection: hostile and broken inputs. Crafted files try to create a marker file; each
test fails if the marker appears (the protection did not hold) or if the error does not name
the file or setting at fault."""

import argparse
import collections
import os
import pickle
import types

import numpy as np
import pytest
import torch
from _detectron import RFPN, TINY, tiny_cfg
from _experiments import ROOT
from detectron2.engine import hooks as d2_hooks
from PIL import Image

from rpanoptic.data import generate_synthetic_panoptic, synthetic_paths
from rpanoptic.data.synthetic import recipe_differences
from rpanoptic.data.synthetic_scene import SceneSpec
from rpanoptic.data.validate import validate_panoptic_dataset
from rpanoptic.engine import cli
from rpanoptic.engine.checkpoint import UNSAFE_PICKLE_ENV, RPanopticCheckpointer
from rpanoptic.engine.resume import recurrent_settings
from rpanoptic.engine.setup import get_rpanoptic_cfg, setup
from rpanoptic.engine.trainer import Trainer
from rpanoptic.evaluation import parse_counts
from rpanoptic.modeling import build_model
from rpanoptic.recurrence import HGRUCell, Recurrence

SPEC = SceneSpec(size=64, curves=(1, 2), shapes=(1, 2))
COUNTS = {"train": 3, "val": 2}


class _Payload:
    """Unpickling this creates ``marker``: what a hostile file would do with os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.fixture
def marker(tmp_path):
    path = str(tmp_path / "PAYLOAD_RAN")
    yield path
    assert not os.path.exists(path), "a crafted file ran code"


@pytest.fixture(autouse=True)
def _no_opt_in(monkeypatch):
    monkeypatch.delenv(UNSAFE_PICKLE_ENV, raising=False)


def _load(path):
    checkpointer = RPanopticCheckpointer(torch.nn.Linear(2, 2))
    if str(path).endswith(".pkl"):
        return checkpointer._load_file(str(path))
    return checkpointer._torch_load(str(path))  # what _load_file calls for .pth


def test_crafted_pth_is_refused_without_running(tmp_path, marker):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"weight": torch.ones(2, 2)}, "x": _Payload(marker)}, path)
    with pytest.raises(RuntimeError, match=rf"{path}.*weights-only.*{UNSAFE_PICKLE_ENV}"):
        _load(path)


def test_crafted_pkl_is_refused_without_running(tmp_path, marker):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": np.ones(2)}, "__author__": "x", "p": _Payload(marker)}, f)
    with pytest.raises(RuntimeError, match=rf"{path}.*refused global"):
        _load(path)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_model_zoo_and_caffe2_pkl_still_load(tmp_path, protocol):
    weights = collections.OrderedDict(w=np.arange(4, dtype=np.float32), b=np.float32(2.0))
    zoo = tmp_path / "zoo.pkl"
    with open(zoo, "wb") as f:
        pickle.dump({"model": weights, "__author__": "Detectron2 Model Zoo"}, f, protocol)
    data = _load(zoo)
    assert data["__author__"] == "Detectron2 Model Zoo"
    np.testing.assert_array_equal(data["model"]["w"], np.arange(4))
    caffe2 = tmp_path / "caffe2.pkl"
    with open(caffe2, "wb") as f:
        pickle.dump({"blobs": {"w": np.ones(3), "w_momentum": np.ones(3)}}, f, protocol)
    data = _load(caffe2)
    assert set(data["model"]) == {"w"} and data["matching_heuristics"] is True


def test_full_unpickling_only_on_explicit_opt_in(tmp_path, monkeypatch):
    path = tmp_path / "trusted.pth"
    torch.save({"model": {"w": torch.ones(1)}, "extra": argparse.Namespace(a=1)}, path)
    with pytest.raises(RuntimeError, match="weights-only"):
        _load(path)
    monkeypatch.setenv(UNSAFE_PICKLE_ENV, "1")
    assert _load(path)["extra"].a == 1


@pytest.mark.parametrize("content", [b"hello world\n", b"PK\x03\x04 truncated", b""])
def test_text_or_truncated_weights_name_the_file(tmp_path, content):
    for name in ("bad.pth", "bad.pkl"):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(RuntimeError, match=rf"{path} is truncated, corrupt or not a check"):
            _load(path)


def test_yaml_with_python_tags_is_refused(tmp_path, marker):
    path = tmp_path / "evil.yaml"
    path.write_text(f'MODEL:\n  DEVICE: !!python/object/apply:os.makedirs ["{marker}"]\n')
    with pytest.raises(ValueError, match=rf"{path}.*not plain YAML"):
        get_rpanoptic_cfg(str(path))
    base = tmp_path / "child.yaml"  # through _BASE_ too
    base.write_text(f'_BASE_: "{path}"\n')
    with pytest.raises(ValueError, match="not plain YAML"):
        get_rpanoptic_cfg(str(base))
    with pytest.raises(FileNotFoundError, match="missing.yaml does not exist"):
        get_rpanoptic_cfg(str(tmp_path / "missing.yaml"))


def test_eval_only_without_weights_is_an_error(tmp_path):
    out = str(tmp_path / "out")
    argv = ["--config-file", RFPN, "--eval-only", "OUTPUT_DIR", out, "MODEL.WEIGHTS", ""]
    with pytest.raises(ValueError, match="--eval-only needs trained weights.*MODEL.WEIGHTS"):
        cli.main(cli.parse_args(argv))
    assert cli.parse_args([*argv[:3], "--eval-random-weights"]).eval_random_weights
    with pytest.raises(SystemExit):
        cli.parse_args(["--config-file", RFPN, "--eval-random-weights"])  # not with training


@pytest.mark.parametrize("text", ["5,,10", "1,a", "", "0,2"])
def test_malformed_step_lists_are_errors(text):
    with pytest.raises(ValueError, match="--eval-timesteps"):
        parse_counts(text)


@pytest.mark.parametrize(
    "opts, pattern",
    [
        (("MODEL.RECURRENT.LCP_TAU", 1.0), r"LCP_TAU = 1.0.*0 < value < 1"),
        (("MODEL.RECURRENT.LCP_TAU", 5.0), r"LCP_TAU = 5.0.*0 < value < 1"),
        (("MODEL.RFPN.LEVELS", []), r"MODEL.RFPN.LEVELS = \[\].*no recurrent layer"),
    ],
)
def test_settings_that_train_no_contraction_are_errors(opts, pattern):
    with pytest.raises(ValueError, match=pattern):
        build_model(tiny_cfg(RFPN, *opts))
    with pytest.raises(ValueError, match="lcp_tau=1.5.*0 < value < 1"):
        Recurrence(HGRUCell(4, timesteps=3, gn_groups=2), 3, grad="crbp", lcp_tau=1.5)


def test_engine_checks_finiteness_by_default():
    rec = Recurrence(HGRUCell(4, timesteps=3, gn_groups=2), 3, grad="crbp")
    x = torch.randn(1, 4, 6, 6)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="diverged.*input x is already non-finite"):
        rec(x)


def test_half_precision_cell_fails_with_a_clear_message():
    rec = Recurrence(HGRUCell(4, timesteps=3, gn_groups=2), 3).half()
    with pytest.raises(TypeError, match=r"torch.float16.*Keep the cell in float32"):
        rec(torch.randn(1, 4, 6, 6).half())
    out = rec.float()(torch.randn(1, 4, 6, 6).half())  # half inputs with a float32 cell: fine
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_rejected_resume_keeps_config_yaml(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    cfg = get_rpanoptic_cfg(RFPN, ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out)])
    trainer_state = {"recurrent": recurrent_settings(cfg), "iteration": 5}
    checkpointer = RPanopticCheckpointer(torch.nn.Linear(1, 1), str(out))
    checkpointer.save("model_0000004", trainer=trainer_state)
    (out / "config.yaml").write_text("the config the checkpoint was trained with\n")
    argv = [
        "--config-file", RFPN, "--resume", "OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu",
        "MODEL.RECURRENT.TIMESTEPS", "7",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="other recurrent settings.*TIMESTEPS"):
        setup(cli.parse_args(argv))
    assert (out / "config.yaml").read_text() == "the config the checkpoint was trained with\n"
    setup(cli.parse_args(argv[:-2]))  # same settings: accepted, and the config is written
    assert "TIMESTEPS: 20" in (out / "config.yaml").read_text()


class _Eval(d2_hooks.EvalHook):
    def __init__(self):
        super().__init__(0, lambda: {})
        self.ran = False

    def after_train(self):
        self.ran = True


class _Writer(d2_hooks.HookBase):
    ran = False

    def after_train(self):
        self.ran = True


@pytest.mark.parametrize("stopped_at, evaluates", [(9, False), (10, True)])
def test_run_that_dies_does_not_evaluate(stopped_at, evaluates):
    """A loop that raised leaves ``iter`` below max_iter (even in its last iteration): then no
    final evaluation runs, but the writers still flush."""
    trainer = Trainer.__new__(Trainer)
    trainer.iter, trainer.max_iter = stopped_at, 10
    trainer.storage = types.SimpleNamespace(iter=0)
    trainer._hooks = [_Eval(), _Writer()]
    trainer.after_train()
    assert trainer._hooks[0].ran is evaluates and trainer._hooks[1].ran


@pytest.fixture
def small_dataset(tmp_path):
    root = str(tmp_path / "synthetic_panoptic")
    assert generate_synthetic_panoptic(root, COUNTS, seed=1, spec=SPEC)
    return root


def _split_args(root, split="train"):
    p = synthetic_paths(root, split)
    keys = ("image_root", "panoptic_root", "panoptic_json", "sem_seg_root", "instances_json")
    return [p[k] for k in keys]


def test_corrupt_image_is_named_before_training_and_prepare_repairs_it(small_dataset):
    image = os.path.join(synthetic_paths(small_dataset, "train")["image_root"], "000001.jpg")
    good = open(image, "rb").read()
    with open(image, "wb") as f:
        f.write(good[: len(good) // 3])  # truncated: exists, does not decode
    with pytest.raises(ValueError, match=rf"image {image} .*cannot be decoded"):
        validate_panoptic_dataset(*_split_args(small_dataset))
    assert validate_panoptic_dataset(*_split_args(small_dataset), decode_images=False) == 3
    # The advice: rerun the prepare command with the same flags. It rewrites the broken split.
    assert generate_synthetic_panoptic(small_dataset, COUNTS, seed=1, spec=SPEC)
    assert open(image, "rb").read() == good
    assert validate_panoptic_dataset(*_split_args(small_dataset)) == 3
    assert not generate_synthetic_panoptic(small_dataset, COUNTS, seed=1, spec=SPEC)


def test_missing_panoptic_png_is_repaired_by_the_prepare_command(small_dataset):
    png = os.path.join(synthetic_paths(small_dataset, "val")["panoptic_root"], "000000.png")
    os.remove(png)
    assert generate_synthetic_panoptic(small_dataset, COUNTS, seed=1, spec=SPEC)
    assert np.asarray(Image.open(png)).any()


def test_dataset_of_another_recipe_is_never_overwritten(small_dataset):
    image = os.path.join(synthetic_paths(small_dataset, "train")["image_root"], "000000.jpg")
    before = open(image, "rb").read()
    other = SceneSpec(size=64, curves=(1, 2), shapes=(1, 2), noise=0.0)
    assert recipe_differences(small_dataset, COUNTS, 1, other) == [
        "spec.noise: there 6.0, asked 0.0"
    ]
    with pytest.raises(ValueError, match=r"another recipe \(spec.noise.*--overwrite"):
        generate_synthetic_panoptic(small_dataset, COUNTS, seed=1, spec=other)
    with pytest.raises(ValueError, match=r"another recipe \(counts"):
        generate_synthetic_panoptic(small_dataset, {"train": 4, "val": 2}, seed=1, spec=SPEC)
    assert open(image, "rb").read() == before
    assert generate_synthetic_panoptic(small_dataset, COUNTS, seed=1, spec=other, overwrite=True)
    assert recipe_differences(small_dataset, COUNTS, 1, other) == []


def test_demo_stops_on_a_dataset_of_another_recipe(tmp_path, monkeypatch):
    import importlib.util

    from rpanoptic.data import EnclosureSpec
    from rpanoptic.data.synthetic import synthetic_folder

    root = tmp_path / "datasets"
    counts = {"train": 2, "val": 1}
    folder = synthetic_folder(counts, EnclosureSpec(), str(root))  # where the demo looks
    generate_synthetic_panoptic(folder, counts, seed=5, spec=EnclosureSpec())
    before = open(os.path.join(folder, "generator.json")).read()
    monkeypatch.setenv("RPANOPTIC_DATASETS", str(root))
    path = os.path.join(ROOT, "tools", "demo.py")
    spec = importlib.util.spec_from_file_location("demo_tool", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert demo.main(["--train", "2", "--val", "1", "--output-dir", str(tmp_path / "o")]) == 2
    assert open(os.path.join(folder, "generator.json")).read() == before
    assert not os.path.exists(tmp_path / "o")


def test_the_gradient_analysis_loads_weights_safely(tmp_path, marker):
    """tools/analyze.py gradients loads MODEL.WEIGHTS through the safe checkpointer, before it
    reads any data: a crafted .pkl is refused, naming the file, and runs nothing."""
    from rpanoptic.analysis import gradients

    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": np.ones(2)}, "__author__": "x", "p": _Payload(marker)}, f)
    tiny = [str(v) for v in TINY[4:]]  # after MODEL.DEVICE and MODEL.WEIGHTS
    argv = ["--config-file", RFPN, "--output", str(tmp_path / "g.csv"), *tiny]
    argv += ["MODEL.WEIGHTS", str(path)]
    with pytest.raises(RuntimeError, match=rf"{path}.*refused global"):
        gradients.main(argv)
    assert not os.path.exists(tmp_path / "g.csv")

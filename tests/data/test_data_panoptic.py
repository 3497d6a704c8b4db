"""Dataset side: registration, the up-front checks and the stuff PNGs, on a tiny dataset."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from _panoptic_data import (  # noqa: F401
    CAR,
    CATEGORIES,
    CATEGORY_OF,
    GRASS,
    PERSON,
    SIZE,
    SKY,
    dataset_kwargs,
    make_dataset,
    segment_ids,
    unique_name,
    write_panoptic_png,
)
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from rpanoptic.data import (
    panoptic_to_semantic,
    register_panoptic_dataset,
    stuff_id_map,
    validate_panoptic_dataset,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "datasets", "prepare_panoptic_fpn.py")


def validate(paths):
    return validate_panoptic_dataset(**dataset_kwargs(paths))


@pytest.fixture
def tiny(tmp_path):
    return make_dataset(str(tmp_path))


def test_register_fills_metadata_and_returns_num_classes(tiny):
    name = unique_name()
    num_classes = register_panoptic_dataset(name, **dataset_kwargs(tiny))
    assert num_classes == {"MODEL.ROI_HEADS.NUM_CLASSES": 2, "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 3}

    sep = MetadataCatalog.get(name + "_separated")
    assert sep.thing_classes == ["person", "car"]
    assert sep.thing_dataset_id_to_contiguous_id == {1: 0, 3: 1}
    assert sep.stuff_classes == ["things", "grass", "sky"]
    assert sep.stuff_dataset_id_to_contiguous_id == {0: 0, 5: 1, 7: 2}
    assert sep.stuff_colors[1:] == [[0, 200, 0], [70, 130, 180]]
    assert sep.thing_colors == [[220, 20, 60], [0, 0, 142]]
    assert sep.evaluator_type == "coco_panoptic_seg" and sep.ignore_label == 255
    assert sep.sem_seg_root == tiny["stuff"] and sep.json_file == tiny["instances_json"]
    assert sep.panoptic_root == tiny["panoptic"] and sep.panoptic_json == tiny["panoptic_json"]

    std = MetadataCatalog.get(name)
    assert std.thing_classes == ["person", "car", "grass", "sky-other-merged"]
    assert std.thing_dataset_id_to_contiguous_id == {1: 0, 3: 1}
    assert std.stuff_dataset_id_to_contiguous_id == {5: 2, 7: 3}
    assert std.label_divisor == 1000 and std.evaluator_type == "coco_panoptic_seg"
    assert std.image_root == tiny["images"]
    assert MetadataCatalog.get(name + "_stuffonly").evaluator_type == "sem_seg"


def test_catalog_records(tiny):
    name = unique_name()
    register_panoptic_dataset(name, **dataset_kwargs(tiny))

    separated = DatasetCatalog.get(name + "_separated")
    assert len(separated) == 3
    first = separated[0]
    assert first["sem_seg_file_name"] == os.path.join(tiny["stuff"], "img0.png")
    assert first["file_name"] == os.path.join(tiny["images"], "img0.jpg")
    assert sorted(a["category_id"] for a in first["annotations"]) == [0, 1]
    assert [len(r["annotations"]) for r in separated] == [2, 1, 2]

    standard = DatasetCatalog.get(name)
    assert standard[1]["pan_seg_file_name"] == os.path.join(tiny["panoptic"], "img1.png")
    segments = {s["id"]: s for s in standard[0]["segments_info"]}
    assert segments[PERSON]["category_id"] == 0 and segments[PERSON]["isthing"]
    assert segments[SKY]["category_id"] == 3 and not segments[SKY]["isthing"]
    assert len(DatasetCatalog.get(name + "_stuffonly")) == 3


def test_separated_record_goes_through_dataset_mapper(tiny):
    from detectron2.data import DatasetMapper

    name = unique_name()
    register_panoptic_dataset(name, **dataset_kwargs(tiny))
    mapper = DatasetMapper(
        is_train=True,
        augmentations=[],
        image_format="BGR",
        use_instance_mask=True,
        instance_mask_format="bitmask",
    )
    out = mapper(DatasetCatalog.get(name + "_separated")[0])
    assert out["image"].shape == (3, SIZE, SIZE)
    assert set(out["sem_seg"].unique().tolist()) == {0, 1, 2, 255}
    assert out["instances"].gt_masks.tensor.sum().item() == 64 + 96


def test_register_twice(tiny, tmp_path):
    name = unique_name()
    first = register_panoptic_dataset(name, **dataset_kwargs(tiny))
    assert register_panoptic_dataset(name, **dataset_kwargs(tiny)) == first
    other = dict(dataset_kwargs(tiny), image_root=str(tmp_path / "elsewhere"))
    with pytest.raises(ValueError, match=name):
        register_panoptic_dataset(name, **other, validate=False)
    with pytest.raises(ValueError, match="coco_2017_val_panoptic"):
        register_panoptic_dataset("coco_2017_val_panoptic", **dataset_kwargs(tiny))


def test_register_standard_only(tiny):
    name = unique_name()
    kwargs = dataset_kwargs(tiny)
    del kwargs["sem_seg_root"], kwargs["instances_json"]
    register_panoptic_dataset(name, **kwargs)
    assert name in DatasetCatalog.list() and name + "_separated" not in DatasetCatalog.list()
    with pytest.raises(ValueError, match="both sem_seg_root and instances_json"):
        register_panoptic_dataset(unique_name(), **kwargs, sem_seg_root=tiny["stuff"])


def test_panoptic_to_semantic_values(tiny, tmp_path):
    out = str(tmp_path / "sem.png")
    with open(tiny["panoptic_json"]) as f:
        ann = json.load(f)["annotations"][0]
    id_map = stuff_id_map(CATEGORIES)
    assert id_map == {1: 0, 3: 0, 5: 1, 7: 2}
    panoptic_to_semantic(
        os.path.join(tiny["panoptic"], "img0.png"), ann["segments_info"], id_map, out
    )
    expected = np.full((SIZE, SIZE), 1, dtype=np.uint8)  # grass
    expected[16:] = 2  # sky
    expected[4:12, 4:12] = 0  # person
    expected[20:28, 18:30] = 0  # car
    expected[0:2, 28:32] = 255  # unlabeled
    np.testing.assert_array_equal(np.asarray(Image.open(out)), expected)
    made = np.asarray(Image.open(os.path.join(tiny["stuff"], "img0.png")))
    np.testing.assert_array_equal(made, expected)


def test_valid_dataset_passes(tiny):
    assert validate(tiny) == 3
    assert validate_panoptic_dataset(tiny["images"], tiny["panoptic"], tiny["panoptic_json"]) == 3


def test_truncated_png(tiny):
    png = os.path.join(tiny["panoptic"], "img1.png")
    with open(png, "rb") as f:
        data = f.read()
    with open(png, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="img1.png.*cannot be decoded"):
        validate(tiny)


def test_segment_in_png_missing_from_json(tiny):
    ids = segment_ids(2)
    ids[30:, :4] = 4242
    write_panoptic_png(os.path.join(tiny["panoptic"], "img2.png"), ids)
    with pytest.raises(ValueError, match=r"img2.png has segment ids \[4242\]"):
        validate(tiny)


def test_json_segment_missing_from_png(tiny):
    ids = segment_ids(0)
    ids[ids == CAR] = SKY
    write_panoptic_png(os.path.join(tiny["panoptic"], "img0.png"), ids)
    with pytest.raises(ValueError, match=rf"img0.png lacks segment ids \[{CAR}\]"):
        validate(tiny)


def test_missing_image_and_wrong_extension(tiny):
    os.rename(os.path.join(tiny["images"], "img1.jpg"), os.path.join(tiny["images"], "img1.png"))
    with pytest.raises(ValueError, match=r"img1.jpg does not exist, but .*img1.png does"):
        validate(tiny)
    os.remove(os.path.join(tiny["images"], "img1.png"))
    with pytest.raises(ValueError, match=r"image .*img1.jpg named in .* does not exist"):
        validate(tiny)


def test_corrupt_json(tiny):
    with open(tiny["panoptic_json"]) as f:
        text = f.read()
    with open(tiny["panoptic_json"], "w") as f:
        f.write(text[:-10])
    with pytest.raises(ValueError, match="panoptic.json is not valid JSON"):
        validate(tiny)


def test_unknown_category_and_missing_stuff_png(tiny):
    os.remove(os.path.join(tiny["stuff"], "img2.png"))
    with pytest.raises(ValueError, match="img2.png does not exist: rerun datasets/prepare_pan"):
        validate(tiny)
    with open(tiny["panoptic_json"]) as f:
        data = json.load(f)
    data["annotations"][1]["segments_info"][0]["category_id"] = 99
    with open(tiny["panoptic_json"], "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match="img1.png: segment .* category_id 99"):
        validate(tiny)


@pytest.mark.slow
def test_prepare_script_runs_and_reruns(tiny, tmp_path):
    out = str(tmp_path / "stuff_script")
    cmd = [sys.executable, SCRIPT, "--panoptic-json", tiny["panoptic_json"]]
    cmd += ["--panoptic-root", tiny["panoptic"], "--output-root", out, "--workers", "2"]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert first.returncode == 0, first.stderr
    assert "wrote 3 stuff PNGs, kept 0" in first.stdout
    for i in range(3):
        made = np.asarray(Image.open(os.path.join(out, f"img{i}.png")))
        expected = np.asarray(Image.open(os.path.join(tiny["stuff"], f"img{i}.png")))
        np.testing.assert_array_equal(made, expected)
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0 and "wrote 0 stuff PNGs, kept 3" in again.stdout


def test_prepare_script_names_missing_input(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("prepare_panoptic_fpn", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert script.main(["--splits", "val2017", "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "panoptic_val2017.json does not exist" in err
    assert "COCO download page" in err


def test_instances_json_must_match_things(tiny):
    with open(tiny["instances_json"]) as f:
        data = json.load(f)
    data["categories"][0]["name"] = "pedestrian"
    with open(tiny["instances_json"], "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match="instances JSON .*instances.json has categories"):
        validate(tiny)

"""Dataset side: registration, the up-front checks and the stuff PNGs, on a tiny dataset."""

import importlib.util
import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from pycocotools import mask as mask_util

from rpanoptic.data import (
    panoptic_to_semantic,
    register_panoptic_dataset,
    separate_semantic_from_panoptic,
    stuff_id_map,
    validate_panoptic_dataset,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "datasets", "prepare_panoptic_fpn.py")

# Listed out of id order on purpose: contiguous ids must follow the ids, not the list order.
CATEGORIES = [
    {"id": 7, "name": "sky-other-merged", "isthing": 0, "color": [70, 130, 180]},
    {"id": 1, "name": "person", "isthing": 1, "color": [220, 20, 60]},
    {"id": 5, "name": "grass", "isthing": 0, "color": [0, 200, 0]},
    {"id": 3, "name": "car", "isthing": 1, "color": [0, 0, 142]},
]
# Segment ids use all three channels (id = R + 256 G + 256^2 B).
GRASS, SKY, PERSON, CAR = 5 + 256, 9, 7 + 2 * 65536, 100
CATEGORY_OF = {GRASS: 5, SKY: 7, PERSON: 1, CAR: 3}
COLORS = {c["id"]: c["color"] for c in CATEGORIES}
SIZE = 32


def segment_ids(index):
    """The id map of image ``index``: grass above, sky below, a person, a car, a void patch."""
    ids = np.full((SIZE, SIZE), GRASS, dtype=np.uint32)
    ids[16:] = SKY
    ids[4:12, 4:12] = PERSON
    if index != 1:  # image 1 has no car
        ids[20:28, 18:30] = CAR
    ids[0:2, 28:32] = 0
    return ids


def write_panoptic_png(path, ids):
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)


def make_dataset(root, num_images=3):
    """Write a tiny COCO panoptic dataset (+ instances JSON and stuff PNGs); return its paths."""
    paths = {k: os.path.join(root, k) for k in ("images", "panoptic", "stuff")}
    paths["panoptic_json"] = os.path.join(root, "panoptic.json")
    paths["instances_json"] = os.path.join(root, "instances.json")
    for k in ("images", "panoptic"):
        os.makedirs(paths[k])
    images, annotations, instances = [], [], []
    rng = np.random.default_rng(0)
    for i in range(num_images):
        ids = segment_ids(i)
        image = rng.integers(0, 40, (SIZE, SIZE, 3)).astype(np.uint8)
        for seg_id, cat in CATEGORY_OF.items():
            image[ids == seg_id] += np.array(COLORS[cat], dtype=np.uint8) // 2
        Image.fromarray(image).save(os.path.join(paths["images"], f"img{i}.jpg"))
        write_panoptic_png(os.path.join(paths["panoptic"], f"img{i}.png"), ids)
        images.append({"id": i, "file_name": f"img{i}.jpg", "height": SIZE, "width": SIZE})
        segments = []
        for seg_id in sorted(set(np.unique(ids).tolist()) - {0}):
            rle = mask_util.encode(np.asfortranarray((ids == seg_id).astype(np.uint8)))
            bbox = [float(v) for v in mask_util.toBbox(rle)]
            area = int(mask_util.area(rle))
            seg = {"id": seg_id, "category_id": CATEGORY_OF[seg_id], "iscrowd": 0}
            segments.append(dict(seg, bbox=bbox, area=area))
            if seg_id in (PERSON, CAR):
                rle["counts"] = rle["counts"].decode("ascii")
                instances.append(
                    {
                        "id": len(instances) + 1,
                        "image_id": i,
                        "category_id": CATEGORY_OF[seg_id],
                        "segmentation": rle,
                        "bbox": bbox,
                        "area": area,
                        "iscrowd": 0,
                    }
                )
        annotations.append({"image_id": i, "file_name": f"img{i}.png", "segments_info": segments})
    with open(paths["panoptic_json"], "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)
    things = [c for c in CATEGORIES if c["isthing"]]
    with open(paths["instances_json"], "w") as f:
        json.dump({"images": images, "annotations": instances, "categories": things}, f)
    separate_semantic_from_panoptic(paths["panoptic_json"], paths["panoptic"], paths["stuff"])
    return paths


def dataset_kwargs(paths):
    return dict(
        image_root=paths["images"],
        panoptic_root=paths["panoptic"],
        panoptic_json=paths["panoptic_json"],
        sem_seg_root=paths["stuff"],
        instances_json=paths["instances_json"],
    )


def validate(paths):
    return validate_panoptic_dataset(**dataset_kwargs(paths))


@pytest.fixture
def tiny(tmp_path):
    return make_dataset(str(tmp_path))


def unique_name():
    return f"rpanoptic_test_{uuid.uuid4().hex[:8]}"


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

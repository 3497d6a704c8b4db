"""A tiny hand-made COCO panoptic dataset (4 categories listed out of id order, segment ids
using all three PNG channels) shared by the data, report, demo and train_net tests."""

import json
import os
import uuid

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from rpanoptic.data import separate_semantic_from_panoptic

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


def unique_name():
    return f"rpanoptic_test_{uuid.uuid4().hex[:8]}"

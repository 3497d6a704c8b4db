"""Dataset dicts of a COCO-panoptic dataset for Detectron2: the standard panoptic records, Panoptic
FPN's ("separated": instances + stuff PNG) and stuff-only ones."""

import os
from typing import Dict, List

from detectron2.data.datasets.coco import load_coco_json

from .metadata import PANOPTIC_JSON_FIX
from .validate import read_json

__all__ = ["load_panoptic_json", "load_panoptic_separated", "load_stuff_only"]


def load_panoptic_json(
    panoptic_json: str, image_root: str, panoptic_root: str, meta: dict
) -> List[dict]:
    """Dataset dicts of the "standard" panoptic dataset (one per annotation).

    Like detectron2's ``load_coco_panoptic_json``, but the image path comes from the image
    entry's file_name (so images need not be ``.jpg``).

    Returns:
        list of dicts with file_name, image_id, height, width, pan_seg_file_name and
        segments_info (category_id contiguous, isthing set).
    """
    data = read_json(panoptic_json, "panoptic JSON", PANOPTIC_JSON_FIX)
    images = {img["id"]: img for img in data["images"]}
    things = meta["thing_dataset_id_to_contiguous_id"]
    stuff = meta["stuff_dataset_id_to_contiguous_id"]
    records = []
    for ann in data["annotations"]:
        image = images[ann["image_id"]]
        segments = []
        for seg in ann["segments_info"]:
            isthing = seg["category_id"] in things
            category = (things if isthing else stuff)[seg["category_id"]]
            segments.append(dict(seg, category_id=category, isthing=isthing))
        records.append(
            {
                "file_name": os.path.join(image_root, image["file_name"]),
                "image_id": ann["image_id"],
                **{k: image[k] for k in ("height", "width") if k in image},
                "pan_seg_file_name": os.path.join(panoptic_root, ann["file_name"]),
                "segments_info": segments,
            }
        )
    return records


def _semantic_files(panoptic_json: str, image_root: str, sem_seg_root: str) -> Dict[int, dict]:
    """image id -> {file_name, sem_seg_file_name} from the panoptic JSON."""
    data = read_json(panoptic_json, "panoptic JSON", PANOPTIC_JSON_FIX)
    images = {img["id"]: img for img in data["images"]}
    return {
        a["image_id"]: {
            "file_name": os.path.join(image_root, images[a["image_id"]]["file_name"]),
            "sem_seg_file_name": os.path.join(sem_seg_root, a["file_name"]),
        }
        for a in data["annotations"]
    }


def load_panoptic_separated(
    name: str, instances_json: str, image_root: str, panoptic_json: str, sem_seg_root: str
) -> List[dict]:
    """Dataset dicts of Panoptic FPN's "separated" dataset: instances + stuff PNG per image.

    Returns:
        the records of ``load_coco_json(instances_json, ...)``, each with its
        ``sem_seg_file_name`` (matched by image id through the panoptic JSON).
    """
    semantic = _semantic_files(panoptic_json, image_root, sem_seg_root)
    records = load_coco_json(instances_json, image_root, name)
    for record in records:
        if record["image_id"] not in semantic:
            raise ValueError(
                f"image {record['file_name']} of {instances_json} has no annotation in "
                f"{panoptic_json}: the two JSONs describe different images; regenerate them "
                "from the same image list"
            )
        record["sem_seg_file_name"] = semantic[record["image_id"]]["sem_seg_file_name"]
    return records


def load_stuff_only(panoptic_json: str, image_root: str, sem_seg_root: str) -> List[dict]:
    return list(_semantic_files(panoptic_json, image_root, sem_seg_root).values())

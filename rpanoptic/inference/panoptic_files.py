"""Predictions in the COCO panoptic format: one PNG per image whose pixels hold segment ids as
R + 256 G + 256^2 B, and one JSON with each image's ``segments_info`` in the dataset's category
ids, as panopticapi's ``pq_compute`` reads them."""

import json
import os
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

from ..utils import atomic_write

__all__ = ["PanopticWriter", "dataset_category_id", "ids_to_rgb"]


def ids_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Segment ids (H, W) -> the COCO panoptic PNG encoding, uint8 (H, W, 3)."""
    ids = ids.astype(np.uint32)
    return np.stack([ids % 256, ids // 256 % 256, ids // 256**2 % 256], axis=-1).astype(np.uint8)


def dataset_category_id(segment: dict, metadata) -> int:
    """The dataset category id of a Panoptic FPN segment (``category_id`` is contiguous: a
    thing class index when ``isthing``, else a stuff class index of the metadata)."""
    contiguous = int(segment["category_id"])
    kind = "thing" if segment.get("isthing", False) else "stuff"
    mapping = metadata.get(f"{kind}_dataset_id_to_contiguous_id", None)
    if not mapping:
        return contiguous
    inverse = {v: k for k, v in mapping.items()}
    if contiguous not in inverse:
        raise ValueError(
            f"predicted {kind} class {contiguous} has no dataset id in the metadata of "
            f"{metadata.name!r} ({kind}_dataset_id_to_contiguous_id); the model and the dataset "
            "named by DATASETS.TEST disagree on the classes."
        )
    return int(inverse[contiguous])


class PanopticWriter:
    """Collects predictions and writes ``<folder>/panoptic/<name>.png`` as they come and
    ``<folder>/panoptic.json`` (images, annotations, categories) on :meth:`close`."""

    def __init__(self, folder: str, metadata):
        self.folder, self.metadata = folder, metadata
        self.png_dir = os.path.join(folder, "panoptic")
        os.makedirs(self.png_dir, exist_ok=True)
        self.images: List[dict] = []
        self.annotations: List[dict] = []

    def add(self, name: str, panoptic_seg, segments_info: Optional[List[dict]]) -> str:
        """Write one image's prediction (``panoptic_seg``: (H, W) ids, 0 = void); returns the
        PNG path."""
        ids = np.asarray(panoptic_seg.cpu() if hasattr(panoptic_seg, "cpu") else panoptic_seg)
        height, width = ids.shape
        segments = []
        for segment in segments_info or []:
            area = int((ids == segment["id"]).sum())
            if area == 0:
                continue
            ys, xs = np.nonzero(ids == segment["id"])
            box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1)]
            box.append(int(ys.max() - ys.min() + 1))
            entry = {
                "id": int(segment["id"]),
                "category_id": dataset_category_id(segment, self.metadata),
                "iscrowd": 0,
                "area": area,
                "bbox": box,
            }
            if "score" in segment:
                entry["score"] = float(segment["score"])
            segments.append(entry)
        png = os.path.join(self.png_dir, name + ".png")
        Image.fromarray(ids_to_rgb(ids)).save(png)
        image_id = len(self.images)
        self.images.append(
            {"id": image_id, "file_name": name + ".png", "height": height, "width": width}
        )
        self.annotations.append(
            {"image_id": image_id, "file_name": name + ".png", "segments_info": segments}
        )
        return png

    def categories(self) -> List[Dict]:
        """The dataset's categories (id, name, isthing) from the metadata."""
        out = []
        for kind, isthing in (("thing", 1), ("stuff", 0)):
            mapping = self.metadata.get(f"{kind}_dataset_id_to_contiguous_id", {}) or {}
            names = self.metadata.get(f"{kind}_classes", []) or []
            for dataset_id, contiguous in sorted(mapping.items()):
                if not isthing and contiguous == 0 and names and names[0] == "things":
                    continue  # Panoptic FPN's "all things" stuff class is not a category
                name = names[contiguous] if contiguous < len(names) else str(dataset_id)
                out.append({"id": int(dataset_id), "name": name, "isthing": isthing})
        return out

    def close(self) -> str:
        """Write panoptic.json; returns its path."""
        path = os.path.join(self.folder, "panoptic.json")
        data = {
            "images": self.images,
            "annotations": self.annotations,
            "categories": self.categories(),
        }
        text = json.dumps(data)
        atomic_write(path, lambda f: f.write(text), binary=False)
        return path

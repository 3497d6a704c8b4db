"""Up-front checks that a COCO panoptic dataset's JSON files and PNGs agree.

Each failed check raises a ValueError naming the first bad file and what to do about it, so a
broken dataset fails at registration instead of deep inside a data-loader worker.
"""

import glob
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

__all__ = ["check_panoptic_json", "read_json", "read_panoptic_png", "validate_panoptic_dataset"]

logger = logging.getLogger(__name__)

REGENERATE = (
    "repair the dataset: for the synthetic set rerun python datasets/prepare_synthetic_panoptic.py"
    " with the flags that made it (it rewrites the splits with missing or corrupt files); for a "
    "downloaded set, extract it again from its download"
)
PROGRESS_FROM = 2000  # show a progress bar from this many annotations on


def read_json(path: str, what: str, fix: str) -> dict:
    """Parse a JSON file, raising a ValueError that names it when it is missing or corrupt.

    Args:
        path: the file.
        what: what it is, for the message (e.g. "panoptic JSON").
        fix: what the user should do, for the message.

    Returns:
        the parsed JSON object.
    """
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path} does not exist: {fix}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {path} is not valid JSON ({e}): {fix}") from e


def read_panoptic_png(path: str) -> np.ndarray:
    """Segment ids of a COCO panoptic PNG: id = R + 256 * G + 256**2 * B (0 = unlabeled).

    Args:
        path: an RGB PNG.

    Returns:
        uint32 array of shape (H, W).
    """
    if not os.path.isfile(path):
        raise ValueError(f"panoptic PNG {path} does not exist: {REGENERATE}")
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            rgb = np.asarray(image, dtype=np.uint32)
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ValueError(
            f"panoptic PNG {path} cannot be decoded (truncated or corrupt: {e}): {REGENERATE}"
        ) from e
    if mode != "RGB":
        raise ValueError(
            f"panoptic PNG {path} has mode {mode}, not RGB, so it is not a COCO panoptic PNG "
            f"(segment id = R + 256 * G + 256**2 * B): {REGENERATE}"
        )
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def check_panoptic_json(data: dict, path: str) -> List[dict]:
    """Check a parsed panoptic JSON's top-level lists and its categories.

    Args:
        data: the parsed JSON.
        path: its file, for the messages.

    Returns:
        its ``categories`` (each with id, name, isthing and color; ids unique).
    """
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise ValueError(
                f"panoptic JSON {path} has no {key!r} list, so it is not in COCO panoptic "
                f"format: {REGENERATE}"
            )
    categories = {}
    for cat in data["categories"]:
        missing = [k for k in ("id", "name", "isthing", "color") if k not in cat]
        if missing or cat["id"] in categories:
            problem = f"lacks {missing}" if missing else "repeats an id"
            raise ValueError(f"panoptic JSON {path}: category {cat} {problem}: {REGENERATE}")
        categories[cat["id"]] = cat
    return data["categories"]


def _check_instances(instances_json: str, categories: Dict[int, dict], annotated: set) -> None:
    """The instances JSON must list exactly the panoptic JSON's things, for the same images."""
    data = read_json(instances_json, "instances JSON", REGENERATE)
    theirs = {c["id"]: c["name"] for c in data.get("categories", [])}
    ours = {i: c["name"] for i, c in categories.items() if c["isthing"]}
    if theirs != ours:
        raise ValueError(
            f"instances JSON {instances_json} has categories {theirs}, but the panoptic JSON's "
            f"thing categories are {ours}: make both JSONs from the same category list"
        )
    for image in data.get("images", []):
        if image["id"] not in annotated:
            raise ValueError(
                f"image {image['file_name']} (id {image['id']}) of instances JSON "
                f"{instances_json} has no panoptic annotation: make both JSONs from the same "
                "images"
            )


def _check_image(image_root: str, file_name: str, panoptic_json: str, decode: bool) -> None:
    path = os.path.join(image_root, file_name)
    if os.path.isfile(path):
        if decode:
            try:
                with Image.open(path) as image:
                    image.load()
            except (OSError, SyntaxError, ValueError, EOFError) as e:
                raise ValueError(
                    f"image {path} named in {panoptic_json} cannot be decoded (truncated or "
                    f"corrupt: {e}): {REGENERATE}"
                ) from e
        return
    stem = os.path.splitext(path)[0]
    others = sorted(glob.glob(glob.escape(stem) + ".*"))
    if others:
        raise ValueError(
            f"image {path} does not exist, but {others[0]} does: the file_name in "
            f"{panoptic_json} has the wrong extension; fix it there or {REGENERATE}"
        )
    raise ValueError(
        f"image {path} named in {panoptic_json} does not exist: check image_root or {REGENERATE}"
    )


def _check_segments(png: str, ids: np.ndarray, segments: List[dict], json_path: str) -> None:
    listed = [s["id"] for s in segments]
    in_png = set(np.unique(ids).tolist()) - {0}
    if len(set(listed)) != len(listed) or 0 in listed:
        raise ValueError(
            f"panoptic PNG {png}: its segments_info in {json_path} repeats a segment id or uses "
            f"0 (reserved for unlabeled pixels): {REGENERATE}"
        )
    extra, absent = sorted(in_png - set(listed)), sorted(set(listed) - in_png)
    if extra:
        raise ValueError(
            f"panoptic PNG {png} has segment ids {extra[:10]} that its segments_info in "
            f"{json_path} does not list; PNG and JSON are out of sync: {REGENERATE}"
        )
    if absent:
        raise ValueError(
            f"panoptic PNG {png} lacks segment ids {absent[:10]} listed in its segments_info "
            f"in {json_path}; PNG and JSON are out of sync: {REGENERATE}"
        )


def validate_panoptic_dataset(
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    sem_seg_root: Optional[str] = None,
    instances_json: Optional[str] = None,
    max_images: Optional[int] = None,
    decode_images: bool = True,
) -> int:
    """Check that a COCO panoptic dataset's files and JSON agree; raise at the first problem.

    Checks that the JSON files parse; that every annotation's image exists in ``image_root``
    (by the image entry's file_name) and decodes; that every panoptic PNG exists, decodes, has the
    image's size, holds exactly the segment ids of its ``segments_info`` (0 = unlabeled) and
    that their categories are known; that ``instances_json`` (if given) has the same thing
    categories and images; and that each stuff PNG exists in ``sem_seg_root`` (if given).

    Args:
        image_root, panoptic_root, panoptic_json, sem_seg_root, instances_json: as for
            :func:`rpanoptic.data.register_panoptic_dataset`.
        max_images: check only the first this many annotations (None: all).
        decode_images: decode every image (False: check only that it exists, for huge sets
            whose images were checked before). Files are checked by several threads, with a
            progress bar for large sets.

    Returns:
        the number of annotations checked.

    Raises:
        ValueError: naming the first bad file and how to fix it.
    """
    data = read_json(panoptic_json, "panoptic JSON", REGENERATE)
    categories = {c["id"]: c for c in check_panoptic_json(data, panoptic_json)}
    images = {image["id"]: image for image in data["images"]}
    annotations = data["annotations"][:max_images]
    if instances_json is not None:
        annotated = {a.get("image_id") for a in data["annotations"]}
        _check_instances(instances_json, categories, annotated)

    def check(ann: dict) -> None:
        png = os.path.join(panoptic_root, ann.get("file_name", "?"))
        image = images.get(ann.get("image_id"))
        if image is None:
            raise ValueError(
                f"panoptic PNG {png}: its annotation in {panoptic_json} has image_id "
                f"{ann.get('image_id')}, which is not in 'images': {REGENERATE}"
            )
        _check_image(image_root, image["file_name"], panoptic_json, decode_images)
        for seg in ann["segments_info"]:
            if seg["category_id"] not in categories:
                raise ValueError(
                    f"panoptic PNG {png}: segment {seg['id']} has category_id "
                    f"{seg['category_id']}, which is not in the categories of {panoptic_json}: "
                    f"{REGENERATE}"
                )
        ids = read_panoptic_png(png)
        size = (image.get("height", ids.shape[0]), image.get("width", ids.shape[1]))
        if ids.shape != size:
            raise ValueError(
                f"panoptic PNG {png} is {ids.shape[1]}x{ids.shape[0]} but its image is "
                f"{size[1]}x{size[0]}: {REGENERATE}"
            )
        _check_segments(png, ids, ann["segments_info"], panoptic_json)
        if sem_seg_root is not None:
            stuff_png = os.path.join(sem_seg_root, ann["file_name"])
            if not os.path.isfile(stuff_png):
                raise ValueError(
                    f"stuff PNG {stuff_png} does not exist: rerun datasets/prepare_panoptic_fpn.py"
                    f" --panoptic-json {panoptic_json} --panoptic-root {panoptic_root} "
                    f"--output-root {sem_seg_root}"
                )

    # Decoding is I/O and C code that releases the GIL: threads check files side by side, and
    # results come back in order, so the first bad annotation is the one reported.
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = pool.map(check, annotations)
        if len(annotations) >= PROGRESS_FROM:
            from tqdm import tqdm

            done = tqdm(done, total=len(annotations), desc="checking dataset files", unit="image")
        for _ in done:
            pass
    logger.info("Checked %d panoptic annotations of %s", len(annotations), panoptic_json)
    return len(annotations)

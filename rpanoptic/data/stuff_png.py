"""Panoptic FPN's stuff PNGs from panoptic PNGs (things -> 0, stuff -> 1..N in category-id
order, unlabeled -> 255): one file (:func:`panoptic_to_semantic`) or a whole dataset in
parallel (:func:`separate_semantic_from_panoptic`)."""

import functools
import logging
import multiprocessing as mp
import os
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from ..utils import atomic_write
from .metadata import IGNORE_LABEL, PANOPTIC_JSON_FIX, stuff_id_map
from .validate import read_json, read_panoptic_png

__all__ = ["panoptic_to_semantic", "separate_semantic_from_panoptic"]

logger = logging.getLogger(__name__)


def panoptic_to_semantic(
    panoptic_png: str, segments_info: List[dict], id_map: Dict[int, int], output_png: str
) -> None:
    """Write one stuff PNG: each pixel the ``id_map`` value of its segment's category.

    Args:
        panoptic_png: path of a COCO panoptic PNG.
        segments_info: that image's ``segments_info`` (id, category_id).
        id_map: category id -> pixel value (see :func:`stuff_id_map`).
        output_png: where to write the uint8 PNG; unlabeled pixels (id 0, or ids not in
            ``segments_info``) get 255. Written to a temporary name first, so an interrupted
            run never leaves a partial file behind.
    """
    ids = read_panoptic_png(panoptic_png)
    lut = {s["id"]: id_map[s["category_id"]] for s in segments_info}
    present, inverse = np.unique(ids, return_inverse=True)
    values = np.array([lut.get(int(i), IGNORE_LABEL) for i in present], dtype=np.uint8)
    semantic = values[inverse].reshape(ids.shape)
    atomic_write(output_png, lambda f: Image.fromarray(semantic).save(f, format="PNG"))


def _convert_one(job: Tuple[str, List[dict], str], id_map: Dict[int, int], overwrite: bool):
    source, segments_info, target = job
    if not overwrite and os.path.isfile(target):
        return False
    panoptic_to_semantic(source, segments_info, id_map, target)
    return True


def separate_semantic_from_panoptic(
    panoptic_json: str,
    panoptic_root: str,
    output_root: str,
    *,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = False,
) -> Dict[str, int]:
    """Make Panoptic FPN's stuff PNGs for every annotation of a panoptic JSON.

    Args:
        panoptic_json: the panoptic JSON (its ``categories`` give the stuff order).
        panoptic_root: folder of the panoptic PNGs named by the annotations' file_name.
        output_root: folder for the stuff PNGs (same file names).
        workers: worker processes (1 runs in this process).
        overwrite: rewrite PNGs that already exist (by default they are kept).
        progress: show a tqdm progress bar.

    Returns:
        dict with the counts ``written`` and ``skipped``.
    """
    data = read_json(panoptic_json, "panoptic JSON", PANOPTIC_JSON_FIX)
    if not os.path.isdir(panoptic_root):
        raise ValueError(
            f"panoptic PNG folder {panoptic_root} does not exist: unzip the panoptic PNG zip "
            "inside the annotations download (for COCO, 'panoptic_train2017.zip' / "
            "'panoptic_val2017.zip' from '2017 Panoptic Train/Val annotations') there"
        )
    id_map = stuff_id_map(data["categories"])
    jobs = [
        (
            os.path.join(panoptic_root, a["file_name"]),
            a["segments_info"],
            os.path.join(output_root, a["file_name"]),
        )
        for a in data["annotations"]
    ]
    os.makedirs(output_root, exist_ok=True)
    convert = functools.partial(_convert_one, id_map=id_map, overwrite=overwrite)
    if workers > 1:
        with mp.Pool(workers) as pool:
            done = _track(pool.imap(convert, jobs, chunksize=64), len(jobs), progress)
    else:
        done = _track(map(convert, jobs), len(jobs), progress)
    written = sum(done)
    logger.info("Wrote %d stuff PNGs to %s (%d kept)", written, output_root, len(jobs) - written)
    return {"written": written, "skipped": len(jobs) - written}


def _track(results, total: int, progress: bool) -> List[bool]:
    if progress:
        from tqdm import tqdm

        results = tqdm(results, total=total, unit="png")
    return list(results)

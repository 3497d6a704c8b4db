"""Datasets in COCO panoptic format: registration with Detectron2 and Panoptic FPN's stuff PNGs.

A dataset in exact COCO panoptic format is: a folder of images, a folder of panoptic PNGs
(segment id = R + 256 * G + 256**2 * B, 0 = unlabeled), a panoptic JSON (``images``,
``annotations`` with ``segments_info``, ``categories`` with id, name, isthing, color) and,
for Panoptic FPN, an instances JSON (things only) and a folder of stuff semantic PNGs made by
``datasets/prepare_panoptic_fpn.py`` (things -> 0, stuff -> 1..N in category-id order,
unlabeled -> 255). The up-front checks of such a dataset are in ``validate.py``.
"""

import functools
import logging
import multiprocessing as mp
import os
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import load_coco_json
from PIL import Image

from ..utils import atomic_write
from .validate import (
    check_panoptic_json,
    read_json,
    read_panoptic_png,
    validate_panoptic_dataset,
)

__all__ = [
    "register_panoptic_dataset",
    "panoptic_metadata",
    "stuff_id_map",
    "panoptic_to_semantic",
    "separate_semantic_from_panoptic",
    "load_panoptic_json",
    "load_panoptic_separated",
    "standard_dataset",
]

logger = logging.getLogger(__name__)

IGNORE_LABEL = 255
LABEL_DIVISOR = 1000
THINGS_COLOR = [82, 18, 128]  # the colour detectron2 gives the merged "things" class
PANOPTIC_JSON_FIX = (
    "for COCO, get annotations/panoptic_{train,val}2017.json from the COCO download page "
    "('2017 Panoptic Train/Val annotations'); otherwise regenerate the dataset"
)

# name -> the arguments it was registered with, so that a repeated call can be checked.
_REGISTERED: Dict[str, Tuple] = {}


def _by_id(categories: List[dict]) -> Tuple[List[dict], List[dict]]:
    """Split categories into (things, stuff), each sorted by id."""
    ordered = sorted(categories, key=lambda c: c["id"])
    return [c for c in ordered if c["isthing"]], [c for c in ordered if not c["isthing"]]


def panoptic_metadata(categories: List[dict]) -> Tuple[dict, dict]:
    """Detectron2 metadata for a panoptic dataset, as detectron2 builds it for COCO panoptic.

    Args:
        categories: the panoptic JSON's ``categories`` (dicts with id, name, isthing, color).

    Returns:
        (separated, standard). ``separated`` is Panoptic FPN's: contiguous thing ids from 0 and
        ``stuff_classes[0] == "things"`` (all things merged), stuff from 1 in id order.
        ``standard`` maps every category to its index in id order, for both things and stuff.
    """
    things, stuff = _by_id(categories)
    separated = {
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [list(c["color"]) for c in things],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
        # Same clean-up of COCO's stuff names ("wall-other-merged" -> "wall") as detectron2.
        "stuff_classes": ["things"]
        + [c["name"].replace("-other", "").replace("-merged", "") for c in stuff],
        "stuff_colors": [THINGS_COLOR] + [list(c["color"]) for c in stuff],
        "stuff_dataset_id_to_contiguous_id": {0: 0, **stuff_id_map(categories, things_to=None)},
    }
    ordered = sorted(categories, key=lambda c: c["id"])
    names, colors = [c["name"] for c in ordered], [list(c["color"]) for c in ordered]
    standard = {
        "thing_classes": names,
        "thing_colors": colors,
        "stuff_classes": list(names),
        "stuff_colors": [list(c) for c in colors],
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(ordered) if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(ordered) if not c["isthing"]
        },
    }
    return separated, standard


def stuff_id_map(categories: List[dict], things_to: Optional[int] = 0) -> Dict[int, int]:
    """Category id -> pixel value of Panoptic FPN's stuff PNGs.

    Args:
        categories: dicts with id and isthing.
        things_to: the value for every thing category (0), or None to leave things out.

    Returns:
        dict: stuff categories, in id order, -> 1..N; things -> ``things_to``.
    """
    things, stuff = _by_id(categories)
    if len(stuff) > IGNORE_LABEL - 1:
        raise ValueError(
            f"{len(stuff)} stuff categories do not fit in a uint8 stuff PNG (at most 254, "
            "since 0 is 'things' and 255 is 'unlabeled'); merge stuff categories"
        )
    id_map = {c["id"]: i + 1 for i, c in enumerate(stuff)}
    if things_to is not None:
        id_map.update({c["id"]: things_to for c in things})
    return id_map


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


def _load_stuff_only(panoptic_json: str, image_root: str, sem_seg_root: str) -> List[dict]:
    return list(_semantic_files(panoptic_json, image_root, sem_seg_root).values())


def register_panoptic_dataset(
    name: str,
    *,
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    sem_seg_root: Optional[str] = None,
    instances_json: Optional[str] = None,
    validate: bool = True,
    decode_images: bool = True,
    categories: Optional[List[dict]] = None,
    before_load: Optional[Callable[[], None]] = None,
) -> Dict[str, int]:
    """Register a dataset in COCO panoptic format, as detectron2 registers COCO panoptic.

    Registers ``name`` (the "standard" panoptic dataset, evaluator ``coco_panoptic_seg``) and,
    when ``sem_seg_root`` and ``instances_json`` are given, ``name + "_separated"`` (Panoptic
    FPN's: instances from ``instances_json``, stuff from the PNGs in ``sem_seg_root``) and
    ``name + "_stuffonly"`` (semantic segmentation of stuff). Calling it again with the same
    arguments does nothing.

    Args:
        name: dataset name, e.g. "mydata_train_panoptic".
        image_root: folder of the images (paths from the images' file_name).
        panoptic_root: folder of the panoptic PNGs.
        panoptic_json: the panoptic JSON; its ``categories`` define the classes.
        sem_seg_root: folder of the stuff PNGs (``datasets/prepare_panoptic_fpn.py``).
        instances_json: COCO instances JSON of the things.
        validate: first check that files and JSON agree (:func:`validate_panoptic_dataset`;
            this reads every PNG, so pass False for very large datasets checked before).
        decode_images: with ``validate``, also decode every image (False: check that each
            exists only; faster on huge sets).
        categories: the panoptic categories, for a dataset whose files may not exist yet (one
            that is generated): nothing is read now, and the checks run when one of the
            registered datasets is first loaded.
        before_load: called before those deferred checks, e.g. to say how to make missing files.

    Returns:
        the config values this dataset needs: ``{"MODEL.ROI_HEADS.NUM_CLASSES": things,
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": stuff + 1}``.
    """
    paths = (image_root, panoptic_root, panoptic_json, sem_seg_root, instances_json)
    args = tuple(None if p is None else os.fspath(p) for p in paths)
    image_root, panoptic_root, panoptic_json, sem_seg_root, instances_json = args
    if _already_registered(name, args):
        return dict(_REGISTERED[name][1])
    separated = sem_seg_root is not None
    names = [name] + ([f"{name}_separated", f"{name}_stuffonly"] if separated else [])
    taken = [n for n in names if n in DatasetCatalog.list()]
    if taken:
        raise ValueError(
            f"dataset {taken[0]!r} is already registered (not by register_panoptic_dataset); "
            "pick another name"
        )
    check = functools.partial(
        validate_panoptic_dataset if validate else _no_check,
        image_root,
        panoptic_root,
        panoptic_json,
        sem_seg_root,
        instances_json,
        **({"decode_images": decode_images} if validate else {}),
    )
    if categories is None:
        check()
        data = read_json(panoptic_json, "panoptic JSON", PANOPTIC_JSON_FIX)
        categories = check_panoptic_json(data, panoptic_json)
        check = _no_check
    separated_meta, standard_meta = panoptic_metadata(categories)
    common = dict(image_root=image_root, panoptic_root=panoptic_root, panoptic_json=panoptic_json)
    checked = _CheckedLoad(panoptic_json, before_load, check)
    DatasetCatalog.register(
        name,
        checked.wrap(load_panoptic_json, panoptic_json, image_root, panoptic_root, standard_meta),
    )
    MetadataCatalog.get(name).set(
        json_file=instances_json,
        evaluator_type="coco_panoptic_seg",
        ignore_label=IGNORE_LABEL,
        label_divisor=LABEL_DIVISOR,
        **common,
        **standard_meta,
    )
    if separated:
        _register_separated(name, common, sem_seg_root, instances_json, separated_meta, checked)
    num_classes = {
        "MODEL.ROI_HEADS.NUM_CLASSES": len(separated_meta["thing_classes"]),
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": len(separated_meta["stuff_classes"]),
    }
    _REGISTERED[name] = (args, num_classes)
    logger.info("Registered panoptic dataset %s: %s", ", ".join(names), num_classes)
    return dict(num_classes)


def _already_registered(name: str, args: Tuple) -> bool:
    """True if ``name`` was registered here with ``args``; raise if with other arguments."""
    if name in _REGISTERED and name not in DatasetCatalog.list():
        del _REGISTERED[name]  # removed from the catalog since: register it afresh
    if name in _REGISTERED and _REGISTERED[name][0] != args:
        raise ValueError(
            f"dataset {name!r} is already registered with other paths {_REGISTERED[name][0]}; "
            "pick another name, or remove it from DatasetCatalog and MetadataCatalog first"
        )
    if (args[3] is None) != (args[4] is None):
        raise ValueError(
            f"dataset {name!r}: give both sem_seg_root and instances_json (for Panoptic FPN's "
            f"{name}_separated dataset) or neither"
        )
    return name in _REGISTERED


def _no_check(*args) -> None:
    return None


class _CheckedLoad:
    """Runs ``before_load`` and the dataset checks before the first load of a dataset (again
    when the panoptic JSON changed, e.g. after the dataset was regenerated)."""

    def __init__(self, panoptic_json: str, before_load: Optional[Callable], check: Callable):
        self.panoptic_json, self.before_load, self.check = panoptic_json, before_load, check
        self.checked_version = None

    def __call__(self, loader: Callable) -> List[dict]:
        if self.before_load is not None:
            self.before_load()
        try:
            version = os.stat(self.panoptic_json).st_mtime_ns
        except OSError:
            version = None  # missing: the check says so, naming the file
        if version is None or version != self.checked_version:
            self.check()
            self.checked_version = version
        return loader()

    def wrap(self, fn: Callable, *args) -> Callable[[], List[dict]]:
        return functools.partial(self, functools.partial(fn, *args))


def _register_separated(name, common, sem_seg_root, instances_json, meta, checked):
    separated_name, stuff_name = f"{name}_separated", f"{name}_stuffonly"
    loader = checked.wrap(
        load_panoptic_separated,
        separated_name,
        instances_json,
        common["image_root"],
        common["panoptic_json"],
        sem_seg_root,
    )
    DatasetCatalog.register(separated_name, loader)
    MetadataCatalog.get(separated_name).set(
        sem_seg_root=sem_seg_root,
        json_file=instances_json,
        evaluator_type="coco_panoptic_seg",
        ignore_label=IGNORE_LABEL,
        **common,
        **meta,
    )
    DatasetCatalog.register(
        stuff_name,
        checked.wrap(_load_stuff_only, common["panoptic_json"], common["image_root"], sem_seg_root),
    )
    MetadataCatalog.get(stuff_name).set(
        sem_seg_root=sem_seg_root,
        image_root=common["image_root"],
        evaluator_type="sem_seg",
        ignore_label=IGNORE_LABEL,
        **meta,
    )


def standard_dataset(name: str) -> str:
    """The standard panoptic dataset of Panoptic FPN's ``<name>_separated`` (else ``name``)."""
    return name[: -len("_separated")] if name.endswith("_separated") else name

"""Registration of datasets in COCO panoptic format with Detectron2.

A dataset in exact COCO panoptic format is: a folder of images, a folder of panoptic PNGs
(segment id = R + 256 * G + 256**2 * B, 0 = unlabeled), a panoptic JSON (``images``,
``annotations`` with ``segments_info``, ``categories`` with id, name, isthing, color) and,
for Panoptic FPN, an instances JSON (things only) and a folder of stuff semantic PNGs made by
``datasets/prepare_panoptic_fpn.py`` (things -> 0, stuff -> 1..N in category-id order,
unlabeled -> 255). The up-front checks of such a dataset are in ``validate.py``.
"""

import functools
import logging
import os
from typing import Callable, Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from .loaders import load_panoptic_json, load_panoptic_separated, load_stuff_only
from .metadata import IGNORE_LABEL, LABEL_DIVISOR, PANOPTIC_JSON_FIX, panoptic_metadata
from .validate import check_panoptic_json, read_json, validate_panoptic_dataset

__all__ = ["forget_registration", "register_panoptic_dataset", "standard_dataset"]

logger = logging.getLogger(__name__)

# name -> the arguments it was registered with, so that a repeated call can be checked.
_REGISTERED: Dict[str, Tuple] = {}


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


def forget_registration(name: str) -> None:
    """Let ``name`` be registered again with other paths (its catalog entries are left to the
    caller to remove)."""
    _REGISTERED.pop(name, None)


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
        checked.wrap(load_stuff_only, common["panoptic_json"], common["image_root"], sem_seg_root),
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

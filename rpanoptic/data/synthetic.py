"""The synthetic panoptic dataset: written in exact COCO panoptic format, registered by name.

Layout under ``<datasets>/synthetic_panoptic/`` (COCO's, with ``train``/``val`` for the splits)::

    train/000000.jpg ...                 RGB images (JPEG)
    panoptic_train/000000.png ...        panoptic PNGs (segment id = R + 256 G + 256^2 B)
    panoptic_stuff_train/000000.png ...  Panoptic FPN's stuff PNGs (things 0, stuff 1..4)
    annotations/panoptic_train.json      images, annotations (segments_info), categories
    annotations/instances_train.json     COCO instances of the things (RLE masks)
    generator.json                       how it was made (seed, counts, scene spec); written last

``<datasets>`` is ``$RPANOPTIC_DATASETS``, else ``$DETECTRON2_DATASETS``, else ``datasets``.
Two kinds of scene (``KINDS``), told apart by the spec passed: ``SceneSpec`` draws the curve
scenes of ``synthetic_scene.py`` (folder ``synthetic_panoptic``, datasets
``synthetic_panoptic_*``); ``EnclosureSpec`` the enclosure scenes of ``enclosure_scene.py``
(folder ``synthetic_enclosure``, datasets ``synthetic_enclosure_*``), whose labels need long-range
grouping.
"""

import dataclasses
import functools
import json
import logging
import multiprocessing as mp
import os
from typing import Dict, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from pycocotools import mask as mask_util

from ..utils import atomic_write_json
from .enclosure_scene import ENCLOSURE_CATEGORIES, EnclosureSpec, make_enclosure_scene
from .panoptic import forget_registration, register_panoptic_dataset
from .stuff_png import separate_semantic_from_panoptic
from .synthetic_scene import CATEGORIES, SceneSpec, make_scene
from .validate import read_panoptic_png, validate_panoptic_dataset

__all__ = [
    "KINDS",
    "scene_kind",
    "SPLITS",
    "datasets_root",
    "synthetic_paths",
    "ensure_synthetic_dataset",
    "generate_synthetic_panoptic",
    "recipe_differences",
    "register_synthetic_panoptic",
    "read_recipe",
    "synthetic_folder",
    "scene_layout",
]

logger = logging.getLogger(__name__)

DEFAULT_COUNTS = {"train": 400, "val": 50}  # images per split of the default datasets
SPLITS = {"train": 0, "val": 1}  # split -> the stream of random numbers it draws from
FOLDER = "synthetic_panoptic"


@dataclasses.dataclass(frozen=True)
class SceneKind:
    """A kind of synthetic scene: its spec class, how a scene is drawn, its categories, and the
    folder and dataset-name prefix it is written and registered under by default."""

    name: str
    spec: type
    make: object
    categories: list
    folder: str


KINDS = {
    "curves": SceneKind("curves", SceneSpec, make_scene, CATEGORIES, FOLDER),
    "enclosure": SceneKind(
        "enclosure",
        EnclosureSpec,
        make_enclosure_scene,
        ENCLOSURE_CATEGORIES,
        "synthetic_enclosure",
    ),
}


def scene_kind(spec) -> SceneKind:
    """The :class:`SceneKind` of a spec (by its class); TypeError for anything else."""
    for kind in KINDS.values():
        if type(spec) is kind.spec:
            return kind
    raise TypeError(
        f"synthetic dataset: {type(spec).__name__} is not a scene spec; give one of "
        f"{', '.join(k.spec.__name__ for k in KINDS.values())}"
    )


PREPARE = "python datasets/prepare_synthetic_panoptic.py"


def datasets_root() -> str:
    """``$RPANOPTIC_DATASETS``, else ``$DETECTRON2_DATASETS``, else ``datasets``."""
    env = os.environ
    return env.get("RPANOPTIC_DATASETS") or env.get("DETECTRON2_DATASETS") or "datasets"


def synthetic_paths(root: str, split: str) -> Dict[str, str]:
    """The files of one split under ``root`` (the ``synthetic_panoptic`` folder), by the
    argument names of :func:`rpanoptic.data.register_panoptic_dataset`."""
    if split not in SPLITS:
        raise ValueError(f"synthetic panoptic split {split!r}: choose one of {sorted(SPLITS)}")
    return {
        "image_root": os.path.join(root, split),
        "panoptic_root": os.path.join(root, f"panoptic_{split}"),
        "panoptic_json": os.path.join(root, "annotations", f"panoptic_{split}.json"),
        "sem_seg_root": os.path.join(root, f"panoptic_stuff_{split}"),
        "instances_json": os.path.join(root, "annotations", f"instances_{split}.json"),
    }


def _encode_ids(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def _one_image(index: int, split: str, seed: int, spec: SceneSpec, paths: Dict[str, str]):
    """Draw and write image ``index`` of ``split``; returns its JSON entries."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    kind = scene_kind(spec)
    image, ids, segments = kind.make(rng, spec)
    stem = f"{index:06d}"
    Image.fromarray(image).save(os.path.join(paths["image_root"], stem + ".jpg"), quality=92)
    Image.fromarray(_encode_ids(ids)).save(os.path.join(paths["panoptic_root"], stem + ".png"))
    things = {c["id"] for c in kind.categories if c["isthing"]}
    segments_info, instances = [], []
    for seg in segments:
        rle = mask_util.encode(np.asfortranarray((ids == seg["id"]).astype(np.uint8)))
        area, bbox = int(mask_util.area(rle)), [int(v) for v in mask_util.toBbox(rle)]
        segments_info.append(dict(seg, iscrowd=0, area=area, bbox=bbox))
        if seg["category_id"] in things:
            rle["counts"] = rle["counts"].decode("ascii")
            instances.append(
                dict(
                    image_id=index,
                    category_id=seg["category_id"],
                    segmentation=rle,
                    iscrowd=0,
                    area=area,
                    bbox=[float(v) for v in bbox],
                )
            )
    size = spec.size
    entry = {"id": index, "file_name": stem + ".jpg", "height": size, "width": size}
    annotation = {"image_id": index, "file_name": stem + ".png", "segments_info": segments_info}
    return entry, annotation, instances


def _generate_split(root, split, count, seed, spec, workers, progress) -> None:
    paths = synthetic_paths(root, split)
    for key in ("image_root", "panoptic_root"):
        os.makedirs(paths[key], exist_ok=True)
    os.makedirs(os.path.dirname(paths["panoptic_json"]), exist_ok=True)
    make = functools.partial(_one_image, split=split, seed=seed, spec=spec, paths=paths)
    with mp.Pool(workers) if workers > 1 else _Serial() as pool:
        results = pool.imap(make, range(count), chunksize=8)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=count, desc=f"synthetic {split}", unit="img")
        results = list(results)
    instances = [dict(a, id=k + 1) for k, a in enumerate(a for r in results for a in r[2])]
    kind = scene_kind(spec)
    info = {"description": f"rpanoptic synthetic {kind.name}, {split}", "version": "1.0"}
    common = {"info": info, "licenses": [], "images": [r[0] for r in results]}
    atomic_write_json(
        paths["panoptic_json"],
        dict(common, annotations=[r[1] for r in results], categories=kind.categories),
    )
    things = [c for c in kind.categories if c["isthing"]]
    atomic_write_json(
        paths["instances_json"], dict(common, annotations=instances, categories=things)
    )
    separate_semantic_from_panoptic(
        paths["panoptic_json"], paths["panoptic_root"], paths["sem_seg_root"], overwrite=True
    )


class _Serial:
    """Stands in for a process pool in this process."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap(self, fn, items, chunksize=1):
        return map(fn, items)


def _recipe(counts: Dict[str, int], seed: int, spec) -> dict:
    recipe = {"seed": seed, "counts": dict(counts), "spec": dataclasses.asdict(spec)}
    kind = scene_kind(spec).name
    if kind != "curves":  # a recipe without "kind" is of the curve scenes (written before kinds)
        recipe["kind"] = kind
    return recipe


def generate_synthetic_panoptic(
    root: str,
    counts: Optional[Dict[str, int]] = None,
    *,
    seed: int = 0,
    spec=SceneSpec(),
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = False,
) -> bool:
    """Write the synthetic dataset to ``root`` (the ``synthetic_panoptic`` folder).

    Deterministic: the same (seed, counts, spec) give the same files, in any number of workers.
    When ``root/generator.json`` already records the same recipe, only the splits with a
    missing or corrupt file are written again (so rerunning the prepare command repairs a
    damaged dataset); when every file is intact, nothing is written.

    Args:
        root: the dataset folder.
        counts: images per split, default {"train": 400, "val": 50}.
        seed: the seed of every scene.
        spec: what scenes contain (image size, number of things, ...), and by its class which
            kind of scene (:data:`KINDS`): a ``SceneSpec`` or an ``EnclosureSpec``.
        workers: processes drawing images.
        overwrite: write even when the recipe is already there, or replace a dataset made with
            another recipe (without it, that is a ValueError listing what differs).
        progress: show progress bars.

    Returns:
        True if the dataset was written, False if it was already there.
    """
    counts = dict(counts or DEFAULT_COUNTS)
    unknown = sorted(set(counts) - set(SPLITS))
    if unknown or any(int(n) < 1 for n in counts.values()):
        raise ValueError(f"synthetic panoptic counts {counts}: give >= 1 image for train/val")
    recipe = _recipe(counts, seed, spec.validate())
    marker = os.path.join(root, "generator.json")
    differ = recipe_differences(root, counts, seed, spec)
    if not overwrite and differ and differ != ["no generator.json"]:
        raise ValueError(
            f"synthetic dataset {root} was made with another recipe ({'; '.join(differ)}); it "
            f"is left as it is. Replace it with: {PREPARE} --overwrite (and the flags you "
            "want), or write the new one to another folder (--root)."
        )
    if not overwrite and not differ:
        broken = [split for split in counts if not _split_intact(root, split)]
        if not broken:
            return False
        logger.warning(
            "Synthetic dataset %s: rewriting split(s) %s (missing or corrupt files)", root, broken
        )
        counts = {split: counts[split] for split in broken}
    if os.path.isfile(marker):
        os.remove(marker)  # the folder is incomplete until the new marker is written
    for split, count in counts.items():
        _generate_split(root, split, int(count), seed, spec, workers, progress)
    atomic_write_json(marker, recipe)
    return True


def recipe_differences(root: str, counts: Dict[str, int], seed: int = 0, spec=SceneSpec()) -> list:
    """How the dataset in ``root`` was made differently from (seed, counts, spec), as
    ["field: there X, asked Y", ...]; ["no generator.json"] when ``root`` has no readable record
    of its recipe; [] when the recipes agree."""
    wanted = json.loads(json.dumps(_recipe(counts, seed, spec)))
    try:
        with open(os.path.join(root, "generator.json")) as f:
            there = json.load(f)
    except (OSError, ValueError):
        return ["no generator.json"]
    # A spec field added after a dataset was made is read as its default, which draws the
    # same scenes as before the field existed.
    defaults = json.loads(json.dumps(dataclasses.asdict(type(spec)())))
    flat = lambda r: {  # noqa: E731
        **{"kind": r.get("kind", "curves"), "seed": r.get("seed"), "counts": r.get("counts")},
        **{f"spec.{k}": v for k, v in {**defaults, **(r.get("spec") or {})}.items()},
    }
    ours, theirs = flat(wanted), flat(there)
    return [
        f"{k}: there {theirs.get(k)!r}, asked {ours.get(k)!r}"
        for k in sorted(set(ours) | set(theirs))
        if ours.get(k) != theirs.get(k)
    ]


def read_recipe(root: str) -> Optional[dict]:
    """The recipe ``root/generator.json`` records (kind, seed, counts, spec as a spec object),
    or None when ``root`` was not made by this generator."""
    try:
        with open(os.path.join(root, "generator.json")) as f:
            there = json.load(f)
        kind = KINDS[there.get("kind", "curves")]
        fields = {f.name for f in dataclasses.fields(kind.spec)}
        spec = kind.spec(
            **{
                k: tuple(v) if isinstance(v, list) else v
                for k, v in (there.get("spec") or {}).items()
                if k in fields
            }
        )
        return dict(there, kind=kind.name, spec=spec)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def scene_layout(root: str, split: str, index: int, recipe: Optional[dict] = None) -> dict:
    """Where the things of enclosure scene ``index`` of ``split`` lie (the ``layout`` of
    :func:`make_enclosure_scene`, plus its segment-id map ``ids``), drawn again from the recipe
    in ``root/generator.json``: a scene is a pure function of its seed. Raises ValueError when
    ``root`` holds no enclosure scenes of this generator, or when the scene drawn again differs
    from the one on disk (a dataset written by another version of the generator: rewrite it)."""
    recipe = recipe or read_recipe(root)
    if recipe is None or recipe["kind"] != "enclosure":
        raise ValueError(
            f"{root}: not an enclosure dataset of this generator (no generator.json of kind "
            f"'enclosure'); make one with {PREPARE} --kind enclosure"
        )
    rng = np.random.default_rng([recipe["seed"], SPLITS[split], index])
    _, ids, _, layout = make_enclosure_scene(rng, recipe["spec"], layout=True)
    png = os.path.join(synthetic_paths(root, split)["panoptic_root"], f"{index:06d}.png")
    if not np.array_equal(read_panoptic_png(png), ids):
        raise ValueError(
            f"{png}: the scene drawn again from {root}/generator.json differs from the one on "
            f"disk (written by another version of the generator); rewrite it with {PREPARE} "
            "--kind enclosure --overwrite"
        )
    return dict(layout, ids=ids)


def _split_intact(root: str, split: str) -> bool:
    """Whether every file of ``split`` in ``root`` is there and decodes (JSON, images, PNGs)."""
    paths = synthetic_paths(root, split)
    try:
        validate_panoptic_dataset(
            paths["image_root"],
            paths["panoptic_root"],
            paths["panoptic_json"],
            paths["sem_seg_root"],
            paths["instances_json"],
        )
        return True
    except ValueError:
        return False


def _check_present(name: str, root: str, split: str, kind: str = "curves") -> None:
    marker, paths = os.path.join(root, "generator.json"), synthetic_paths(root, split)
    if not os.path.isfile(marker) or not os.path.isfile(paths["panoptic_json"]):
        flag = "" if kind == "curves" else f" --kind {kind}"
        raise FileNotFoundError(
            f"dataset {name!r}: the synthetic {kind} {split} split is not in {root} (or its "
            f"generation did not finish). Make it with: {PREPARE}{flag} --root "
            f"{os.path.dirname(os.path.abspath(root))}"
        )


def register_synthetic_panoptic(
    root: Optional[str] = None, prefix: str = "", kind: str = "curves"
) -> Dict[str, int]:
    """Register ``<prefix>_{train,val}`` (standard panoptic), ``..._separated`` (Panoptic FPN's)
    and ``..._stuffonly`` of the ``kind`` of scene (:data:`KINDS`), reading from ``root``
    (default ``<datasets>/<the kind's folder>``); the default prefix is the kind's folder
    (``synthetic_panoptic``, ``synthetic_enclosure``).

    The files need not exist yet: they are checked (and a missing split fails with the command
    that makes it) when a dataset is first loaded. Registering again replaces the names.

    Returns:
        the config values the dataset needs (``MODEL.ROI_HEADS.NUM_CLASSES``,
        ``MODEL.SEM_SEG_HEAD.NUM_CLASSES``).
    """
    if kind not in KINDS:
        raise ValueError(f"synthetic dataset kind {kind!r}: choose one of {sorted(KINDS)}")
    scenes = KINDS[kind]
    root = root or os.path.join(datasets_root(), scenes.folder)
    prefix = prefix or scenes.folder
    for split in SPLITS:
        name = f"{prefix}_{split}"
        for registered in (name, f"{name}_separated", f"{name}_stuffonly"):
            if registered in DatasetCatalog.list():
                DatasetCatalog.remove(registered)
                MetadataCatalog.remove(registered)
        forget_registration(name)
        num_classes = register_panoptic_dataset(
            name,
            **synthetic_paths(root, split),
            categories=scenes.categories,
            before_load=functools.partial(_check_present, name, root, split, kind),
        )
    return num_classes


def synthetic_folder(counts: Dict[str, int], spec, datasets: str = "") -> str:
    """Where :func:`ensure_synthetic_dataset` keeps the dataset of ``counts`` and ``spec`` under
    ``datasets`` (default :func:`datasets_root`): the kind's folder, then each spec field that
    differs from the kind's default scenes (the size aside) and the counts when they are not
    :data:`DEFAULT_COUNTS`, e.g. ``synthetic_enclosure_gap14-20_train2000_val100``."""
    default = dataclasses.asdict(type(spec)(size=spec.size))
    changed = [f"{k}{v}" for k, v in dataclasses.asdict(spec).items() if default[k] != v]
    if dict(counts) != DEFAULT_COUNTS:
        changed += [f"{split}{n}" for split, n in sorted(counts.items())]
    name = "_".join([scene_kind(spec).folder] + changed)
    name = name.replace(" ", "").replace("(", "").replace(")", "").replace(",", "-")
    return os.path.join(datasets or datasets_root(), name)


def ensure_synthetic_dataset(
    counts: Dict[str, int],
    seed: int = 0,
    size: int = SceneSpec.size,
    root: str = "",
    spec=None,
) -> str:
    """Generate the synthetic dataset (``size`` px images, or ``spec``'s scenes) into ``root``
    unless it is there with the same recipe (one made with another recipe raises ValueError
    and is left as it is); registers it and returns its folder. The default root is
    ``<datasets>/synthetic_panoptic`` (``synthetic_enclosure`` for an ``EnclosureSpec``), and
    ``<folder>_<fields>`` for a ``spec`` that differs from its kind's default scenes in more
    than the size, with ``_train<n>_val<m>`` for counts other than :data:`DEFAULT_COUNTS` (so
    variants never overwrite it)."""
    spec = spec or SceneSpec(size=size)
    kind = scene_kind(spec)
    root = root or synthetic_folder(counts, spec)
    if generate_synthetic_panoptic(
        root, counts, seed=seed, spec=spec, workers=os.cpu_count() or 1, progress=True
    ):
        logger.info("Wrote the synthetic panoptic dataset to %s", root)
    register_synthetic_panoptic(root, kind=kind.name)
    return root

"""Detectron2 metadata of a COCO-panoptic category list: the standard and Panoptic FPN
("separated") views, and the stuff-class numbering of Panoptic FPN's semantic PNGs."""

from typing import Dict, List, Optional, Tuple

__all__ = [
    "IGNORE_LABEL",
    "LABEL_DIVISOR",
    "PANOPTIC_JSON_FIX",
    "panoptic_metadata",
    "stuff_id_map",
]

IGNORE_LABEL = 255
LABEL_DIVISOR = 1000
THINGS_COLOR = [82, 18, 128]  # the colour detectron2 gives the merged "things" class
PANOPTIC_JSON_FIX = (
    "for COCO, get annotations/panoptic_{train,val}2017.json from the COCO download page "
    "('2017 Panoptic Train/Val annotations'); otherwise regenerate the dataset"
)


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

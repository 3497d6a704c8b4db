"""Datasets: registration of COCO-panoptic-format datasets, their checks and stuff PNGs."""

from .enclosure_scene import EnclosureSpec, make_enclosure_scene
from .loaders import load_panoptic_json, load_panoptic_separated
from .metadata import panoptic_metadata, stuff_id_map
from .panoptic import register_panoptic_dataset, standard_dataset
from .stuff_png import panoptic_to_semantic, separate_semantic_from_panoptic
from .synthetic import (
    KINDS,
    ensure_synthetic_dataset,
    generate_synthetic_panoptic,
    register_synthetic_panoptic,
    synthetic_paths,
)
from .synthetic_scene import SceneSpec, make_scene
from .validate import validate_panoptic_dataset

__all__ = [
    "KINDS",
    "EnclosureSpec",
    "make_enclosure_scene",
    "SceneSpec",
    "ensure_synthetic_dataset",
    "generate_synthetic_panoptic",
    "make_scene",
    "register_synthetic_panoptic",
    "synthetic_paths",
    "load_panoptic_json",
    "load_panoptic_separated",
    "panoptic_metadata",
    "panoptic_to_semantic",
    "register_panoptic_dataset",
    "separate_semantic_from_panoptic",
    "standard_dataset",
    "stuff_id_map",
    "validate_panoptic_dataset",
]

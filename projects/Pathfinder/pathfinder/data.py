"""Loading a Pathfinder set made by :func:`~pathfinder.generate_pathfinder` for one of
the two tasks (see :mod:`pathfinder.train`): the images and labels, and for the trace
task the cue (a disk on the first dot), the target path and the probe (a disk on the second)."""

import csv
import json
import os
from typing import NamedTuple, Optional

import numpy as np
import torch
from PIL import Image

__all__ = ["PathfinderSplit", "load_recipe", "load_split"]


class PathfinderSplit(NamedTuple):
    """A loaded split: ``x`` (N, C, H, W) in [0, 1] (C = 1: image; 2: image and cue), ``y`` (N,)
    labels; for the trace task also ``target`` (N, 1, H, W) float mask of the path through the
    first dot and ``probe`` (N, 1, H, W) bool disk on the second dot."""

    x: torch.Tensor
    y: torch.Tensor
    target: Optional[torch.Tensor] = None
    probe: Optional[torch.Tensor] = None

    def take(self, idx) -> "PathfinderSplit":
        return PathfinderSplit(*(None if t is None else t[idx] for t in self))

    def to(self, device) -> "PathfinderSplit":
        return PathfinderSplit(*(None if t is None else t.to(device) for t in self))

    def __len__(self) -> int:  # the number of examples (not of fields)
        return len(self.y)


def _read_png(path: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as e:
        raise ValueError(f"pathfinder image {path} cannot be read ({e}): make the set again")


def _disks(rows, xk: str, yk: str, radius: float, size: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cx = torch.tensor([float(r[xk]) for r in rows])[:, None, None]
    cy = torch.tensor([float(r[yk]) for r in rows])[:, None, None]
    return ((xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2)[:, None]


def load_recipe(root: str) -> Optional[dict]:
    """The set's ``generator.json`` (its generator recipe), or None when it has none."""
    path = os.path.join(root, "generator.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def load_split(root: str, split: str, task: str = "label") -> PathfinderSplit:
    """``root/split`` (labels.csv + PNGs) for ``task`` ("label" or "trace")."""
    if task not in ("label", "trace"):
        raise ValueError(f"pathfinder: task={task!r} is invalid; allowed: 'label' | 'trace'")
    folder = os.path.join(root, split)
    table = os.path.join(folder, "labels.csv")
    if not os.path.isfile(table):
        raise FileNotFoundError(
            f"pathfinder split {folder} has no labels.csv: make it with "
            "python projects/Pathfinder/prepare_data.py (see its --help)"
        )
    with open(table) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"pathfinder split {table} has no examples: make the set again")
    x = torch.from_numpy(np.stack([_read_png(os.path.join(folder, r["file"])) for r in rows]))
    x = x[:, None]
    y = torch.tensor([float(r["label"]) for r in rows])
    if task == "label":
        return PathfinderSplit(x, y)
    if not {"x0", "y0", "x1", "y1"} <= set(rows[0]):
        raise ValueError(
            f"{table} has no dot centres (x0, y0, x1, y1): it was made by an older generator; "
            "run python projects/Pathfinder/prepare_data.py again with the same flags"
        )
    recipe = load_recipe(root)
    if recipe is None:
        raise FileNotFoundError(
            f"pathfinder set {root} has no generator.json: make it again with "
            "python projects/Pathfinder/prepare_data.py (see its --help)"
        )
    radius = float(recipe["spec"]["dot_radius"])
    size = x.shape[-1]
    cue = _disks(rows, "x0", "y0", radius, size).float()
    probe = _disks(rows, "x1", "y1", radius + 1.0, size)
    target = [
        _read_png(os.path.join(folder, r["file"][: -len(".png")] + "_target.png")) for r in rows
    ]
    target = (torch.from_numpy(np.stack(target))[:, None] > 0.5).float()
    return PathfinderSplit(torch.cat([x, cue], 1), y, target, probe)

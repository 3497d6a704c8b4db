"""Pathfinder images: dashed curved paths ("snakes") and two marker dots.

An example holds ``snakes`` paths of ``segments`` dashes each. A path starts at a random point
and heading; each dash is a short straight stroke of ``dash`` pixels, followed by a gap of
``gap`` pixels, and the heading turns by at most ``max_turn`` radians between dashes, so a
path is smooth but can curl. Paths may cross each other. Two dots are drawn:

- positive (label 1): at both ends of path 0;
- negative (label 0): at the start of path 0 and at the start of path 1, which is drawn to
  start exactly as far from the first dot as path 0 ends. The distance between the dots then
  has the same distribution in both classes and says nothing of the label (drawing path 1
  anywhere, the distance alone predicted 75% of the labels of a 32 px set: positives' dots
  are at most a path's length apart).

Telling them apart needs following path 0 from one dot, dash after dash and through crossings:
locally both classes look alike. Difficulty is the number of dashes per path (the paper's
levels of 6, 9 and 14 segments at 150 px, here scaled to the image size with the dash length).

Everything is drawn from ``numpy.random.default_rng([seed, index])``: an example is a pure
function of (spec, seed, index). :func:`check_label` verifies a label from the rendered pixels
of each path (not from the geometry that drew it).
"""

import csv
import functools
import json
import math
import multiprocessing
import os
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

__all__ = [
    "DIFFICULTY",
    "FORMAT",
    "PathfinderSpec",
    "check_label",
    "generate_pathfinder",
    "make_example",
]

# Version of what generate_pathfinder writes (2: labels.csv holds the dot centres; 3: the dots
# of negatives are as far apart as those of positives); a set of another version is written
# again.
FORMAT = 3

# The paper's three levels (dashes per path), used by name in commands and tables.
DIFFICULTY = {"easy": 6, "medium": 9, "hard": 14}


@dataclass(frozen=True)
class PathfinderSpec:
    """What an example holds (lengths in pixels)."""

    size: int = 64
    segments: int = 6  # dashes per path
    snakes: int = 4  # paths per image: path 0 (target), path 1 (the negative's) and distractors
    dash: float = 4.0  # length of a dash
    gap: float = 2.0  # gap between dashes
    max_turn: float = 0.6  # largest heading change between dashes (radians)
    width: int = 1  # stroke width
    dot_radius: float = 1.6
    margin: int = 3  # paths keep this far from the border

    def validate(self) -> "PathfinderSpec":
        """Raise ValueError naming the field when a value cannot make an example."""
        checks = {
            "size": self.size >= 16,
            "segments": self.segments >= 1,
            "snakes": self.snakes >= 2,
            "dash": self.dash >= 1,
            "gap": 0 < self.gap < self.dash * 2,
            "max_turn": 0 <= self.max_turn <= math.pi,
            "width": self.width >= 1,
            "dot_radius": self.dot_radius > 0,
            "margin": 0 <= self.margin < self.size // 4,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"pathfinder: {name}={getattr(self, name)!r} is invalid")
        return self

    @classmethod
    def scaled(cls, size: int, difficulty: str, snakes: int) -> "PathfinderSpec":
        """The default spec drawn at ``size`` px: dashes, gaps, stroke, dots and margin grow
        with the image, and ``difficulty`` (a key of :data:`DIFFICULTY`) sets the dashes per
        path."""
        scale = size / cls.size
        return cls(
            size=size,
            segments=DIFFICULTY[difficulty],
            snakes=snakes,
            dash=cls.dash * scale,
            gap=cls.gap * scale,
            width=max(1, round(cls.width * scale)),
            dot_radius=cls.dot_radius * scale,
            margin=max(1, round(cls.margin * scale)),
        )


def _inside(spec: PathfinderSpec, q) -> bool:
    lo, hi = spec.margin, spec.size - 1 - spec.margin
    return bool((q >= lo).all() and (q <= hi).all())


def _path(rng, spec: PathfinderSpec, tries: int = 200, start=None) -> np.ndarray:
    """The dashes of one path, (segments, 2, 2) start/end points, inside the margins, from
    ``start`` when given (else a random point). A dash that would leave the image turns away
    instead (up to half a turn), so long paths curl inside small images rather than being
    rejected."""
    lo, hi = spec.margin, spec.size - 1 - spec.margin

    def inside(q):
        return _inside(spec, q)

    for _ in range(tries):
        point = rng.uniform(lo, hi, 2) if start is None else np.asarray(start, dtype=float)
        heading = rng.uniform(0, 2 * math.pi)
        dashes = []
        for k in range(spec.segments):
            turn = rng.uniform(-spec.max_turn, spec.max_turn) if k else 0.0
            for bend in np.linspace(0, math.pi, 9):  # straight on first, then turn away more
                for sign in (1, -1):
                    h = heading + turn + sign * bend
                    step = np.array([math.cos(h), math.sin(h)])
                    end = point + spec.dash * step
                    if inside(end) and inside(end + spec.gap * step):
                        break
                else:
                    continue
                break
            else:
                break  # boxed in: start the path again
            heading = h
            dashes.append((point, end))
            point = end + spec.gap * step
        if len(dashes) == spec.segments:
            return np.array(dashes)
    raise ValueError(
        f"pathfinder: no path of {spec.segments} dashes fits a {spec.size} px image in {tries} "
        "tries; lower segments/dash or raise size"
    )


def _render(spec: PathfinderSpec, dashes: np.ndarray) -> np.ndarray:
    canvas = Image.new("L", (spec.size, spec.size), 0)
    draw = ImageDraw.Draw(canvas)
    for start, end in dashes:
        draw.line([tuple(start), tuple(end)], fill=255, width=spec.width)
    return np.asarray(canvas) > 0


def _dot(spec: PathfinderSpec, centre) -> np.ndarray:
    yy, xx = np.mgrid[0 : spec.size, 0 : spec.size]
    return (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= spec.dot_radius**2


def _at_distance(rng, spec: PathfinderSpec, centre, distance: float, tries: int = 50):
    """A point inside the margins at ``distance`` from ``centre`` (None if none was found)."""
    for _ in range(tries):
        angle = rng.uniform(0, 2 * math.pi)
        point = centre + distance * np.array([math.cos(angle), math.sin(angle)])
        if _inside(spec, point):
            return point
    return None


def make_example(spec: PathfinderSpec, seed: int, index: int) -> Dict:
    """One example: ``image`` (size, size) uint8, ``label`` (1: the dots are on one path),
    ``target`` (bool mask of path 0, the path through the first dot), ``paths`` (bool mask per
    path, path 0 first) and ``dots`` ((2, 2) x, y centres). The label alternates with
    ``index`` so that any run of examples is balanced."""
    rng = np.random.default_rng([seed, index])
    label = index % 2
    clear = spec.dot_radius + spec.gap + spec.width + 1  # a dot this far from other paths
    for _ in range(100):
        paths = [_path(rng, spec)]
        first, end = paths[0][0][0], paths[0][-1][1]
        if label:
            second, owners = end, (0, 0)
        else:  # path 1 starts as far from the first dot as path 0 ends (see the module)
            second = _at_distance(rng, spec, first, float(np.linalg.norm(end - first)))
            if second is None:
                continue
            try:
                paths.append(_path(rng, spec, start=second))
            except ValueError:
                continue
            owners = (0, 1)
        paths += [_path(rng, spec) for _ in range(spec.snakes - len(paths))]
        masks = [_render(spec, p) for p in paths]
        dots = np.array([first, second])
        # Each dot touches only its own path, so that a dot never sits on a crossing.
        far = [ndimage.distance_transform_edt(~m) for m in masks]
        if all(
            far[k][int(round(d[1])), int(round(d[0]))] > clear
            for d, owner in zip(dots, owners)
            for k in range(spec.snakes)
            if k != owner
        ):
            break
    else:
        raise ValueError(
            f"pathfinder: example {index} (seed {seed}) could not place its dots clear of the "
            "other paths; use fewer snakes or a larger image"
        )
    image = np.zeros((spec.size, spec.size), dtype=np.uint8)
    for m in masks:
        image[m] = 255
    for d in dots:
        image[_dot(spec, d)] = 255
    return {"image": image, "label": label, "target": masks[0], "paths": masks, "dots": dots}


def check_label(spec: PathfinderSpec, example: Dict) -> bool:
    """Whether ``example["label"]`` is what its rendered paths say: follow, in the pixels of each
    path, the dashes from the first dot (dashes within ``gap`` + 1 px of each other are one
    path) and see whether the second dot is reached. Each path is followed on its own pixels,
    so a crossing does not join two paths."""
    reach = int(math.ceil(spec.gap)) + 1
    structure = np.ones((2 * reach + 1, 2 * reach + 1), dtype=bool)
    dots = [_dot(spec, d) for d in example["dots"]]
    on_one_path = False
    for mask in example["paths"]:
        joined, _ = ndimage.label(ndimage.binary_dilation(mask, structure))
        grown = ndimage.binary_dilation(mask, iterations=2)
        ids = [set(np.unique(joined[dot & grown]).tolist()) - {0} for dot in dots]
        if ids[0] & ids[1]:
            on_one_path = True
    return on_one_path == bool(example["label"])


def _write_example(i: int, spec: "PathfinderSpec", seed: int, folder: str, check: bool) -> Dict:
    """Draw example ``i``, check its label, write its image and target; its labels.csv row."""
    example = make_example(spec, seed, i)
    if check and not check_label(spec, example):
        raise ValueError(f"pathfinder: example {folder}/{i} fails its label check")
    name = f"{i:06d}"
    Image.fromarray(example["image"]).save(os.path.join(folder, name + ".png"))
    target = example["target"].astype(np.uint8) * 255
    Image.fromarray(target).save(os.path.join(folder, name + "_target.png"))
    (x0, y0), (x1, y1) = np.round(example["dots"], 2).tolist()
    return dict(file=name + ".png", label=example["label"], segments=spec.segments) | dict(
        x0=x0, y0=y0, x1=x1, y1=y1
    )


def generate_pathfinder(
    root: str,
    counts: Optional[Dict[str, int]] = None,
    spec: PathfinderSpec = PathfinderSpec(),
    seed: int = 0,
    progress: bool = False,
    check: bool = True,
    workers: int = 1,
) -> Tuple[str, bool]:
    """Write ``counts`` examples per split to ``root``: ``<split>/<index>.png`` (image),
    ``<split>/<index>_target.png`` (mask of the path through the first dot) and
    ``<split>/labels.csv`` (file, label, segments, and the dot centres x0, y0 of the first dot
    and x1, y1 of the second); ``generator.json`` records the recipe and is written last. When
    it already records the same recipe nothing is written. With ``check``, every label
    is verified by :func:`check_label` (a ValueError names a wrong one). ``workers`` processes
    draw the examples; as each is a pure function of (spec, seed, index), the files are the
    same for any number of workers.

    Returns (root, whether anything was written).
    """
    from tqdm import tqdm

    if int(workers) < 1:
        raise ValueError(f"generate_pathfinder: workers must be >= 1, got {workers}")
    counts = dict(counts or {"train": 2000, "val": 400})
    recipe = {"format": FORMAT, "seed": seed, "counts": counts, "spec": asdict(spec.validate())}
    marker = os.path.join(root, "generator.json")
    if os.path.isfile(marker):
        with open(marker) as f:
            try:
                if json.load(f) == json.loads(json.dumps(recipe)):
                    return root, False
            except ValueError:
                pass
        os.remove(marker)
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        for offset, (split, count) in enumerate(sorted(counts.items())):
            folder = os.path.join(root, split)
            os.makedirs(folder, exist_ok=True)
            write = functools.partial(
                _write_example, spec=spec, seed=seed * 1000 + offset, folder=folder, check=check
            )
            if pool is None:
                rows = map(write, range(count))
            else:
                rows = pool.imap(write, range(count), chunksize=max(1, min(64, count // workers)))
            if progress:
                rows = tqdm(rows, total=count, desc=f"pathfinder {split}", unit="image")
            rows = list(rows)
            with open(os.path.join(folder, "labels.csv"), "w", newline="") as f:
                fields = list(rows[0]) if rows else ["file", "label"]
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
    finally:
        if pool is not None:
            pool.terminate()
    with open(marker, "w") as f:
        json.dump(recipe, f)
    return root, True

"""One scene of the synthetic panoptic dataset: a segment-id map and the image rendered from it.

A scene is built as labels first, then pixels:

1. Stuff: 2-3 of the stuff classes split the image along irregular boundaries (the argmax of
   smooth random fields with a finer field added, so borders wander at two scales).
2. Things, painted in a random depth order (later ones occlude earlier ones):
   - curves: long, thin cubic Bezier contours, *all of one colour in an image* (by default;
     ``curve_same_colour`` < 1 gives some curves their own colour), made to cross one another,
     so that which piece belongs to which curve is only told by following it through the
     crossings (the Pathfinder-style long-range grouping of the paper);
   - ellipses and polygons: compact shapes; some copy a neighbour's colour and overlap it, so
     that the boundary between two same-coloured shapes has to be inferred from their outline.
   A thing whose visible area falls below ``min_area`` is removed (its pixels show what lies
   below it).
3. Pixels: each stuff class has its own texture (stripes, waves, grain, tiles) on a jittered
   base colour; things are flat colours with a faint shading; sensor noise on top.

Everything is drawn from a ``numpy.random.Generator``, so a scene is a pure function of its seed.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

__all__ = ["CATEGORIES", "SceneSpec", "make_scene", "parse_scene", "segment_id"]

# COCO panoptic categories (things first, as in COCO). Colours are for visualisation only.
CATEGORIES = [
    {"id": 1, "name": "curve", "isthing": 1, "color": [230, 25, 75], "supercategory": "contour"},
    {"id": 2, "name": "ellipse", "isthing": 1, "color": [60, 180, 75], "supercategory": "shape"},
    {"id": 3, "name": "polygon", "isthing": 1, "color": [0, 130, 200], "supercategory": "shape"},
    {"id": 11, "name": "meadow", "isthing": 0, "color": [110, 160, 60], "supercategory": "ground"},
    {"id": 12, "name": "water", "isthing": 0, "color": [60, 110, 170], "supercategory": "ground"},
    {"id": 13, "name": "sand", "isthing": 0, "color": [200, 180, 120], "supercategory": "ground"},
    {"id": 14, "name": "tiles", "isthing": 0, "color": [150, 90, 80], "supercategory": "ground"},
]
CURVE, ELLIPSE, POLYGON = 1, 2, 3
STUFF_IDS = [c["id"] for c in CATEGORIES if not c["isthing"]]
BASE_COLOR = {c["id"]: np.array(c["color"], dtype=np.float32) for c in CATEGORIES}


@dataclass(frozen=True)
class SceneSpec:
    """What a scene may contain. Ranges are inclusive (low, high)."""

    size: int = 160
    curves: Tuple[int, int] = (2, 4)
    shapes: Tuple[int, int] = (2, 5)
    stuff_classes: Tuple[int, int] = (2, 3)
    curve_width: Tuple[float, float] = (0.03, 0.045)  # fraction of the image size
    curve_length: Tuple[float, float] = (0.7, 1.0)  # endpoint distance, fraction of the size
    curve_same_colour: float = 1.0  # probability that a curve has the image's curve colour
    shape_touch: float = 0.35  # probability that a shape overlaps a same-coloured shape
    curves_behind: bool = False  # draw every curve before the shapes (no shape is cut by one)
    shape_radius: Tuple[float, float] = (0.05, 0.13)  # fraction of the image size
    min_area: int = 24  # pixels; smaller visible things are removed
    noise: float = 6.0  # standard deviation of the sensor noise (0-255 scale)

    def validate(self) -> "SceneSpec":
        """Raise ValueError naming the field when a value cannot make a scene."""
        checks = {
            "size": self.size >= 32,
            "curves": 0 <= self.curves[0] <= self.curves[1],
            "shapes": 0 <= self.shapes[0] <= self.shapes[1],
            "stuff_classes": 1 <= self.stuff_classes[0] <= self.stuff_classes[1] <= 4,
            "curve_width": 0 < self.curve_width[0] <= self.curve_width[1] < 0.5,
            "curve_length": 0 < self.curve_length[0] <= self.curve_length[1] <= 2,
            "shape_radius": 0 < self.shape_radius[0] <= self.shape_radius[1] < 0.5,
            "curve_same_colour": 0 <= self.curve_same_colour <= 1,
            "shape_touch": 0 <= self.shape_touch <= 1,
            "min_area": self.min_area >= 1,
            "noise": self.noise >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"synthetic scene: {name}={getattr(self, name)!r} is invalid")
        return self


def parse_scene(text: str, size: int = SceneSpec.size, spec_class: type = SceneSpec):
    """A ``spec_class`` (default :class:`SceneSpec`; any frozen dataclass of scene fields, e.g.
    ``EnclosureSpec``) of ``size`` px from "field=value,field=value": numbers and booleans for
    scalar fields, "low:high" for ranges (e.g. ``curves=2:3,curve_width=0.08:0.11``); raises
    ValueError naming an unknown field or a bad value."""
    fields = {f.name: f for f in dataclasses.fields(spec_class)}
    values = {"size": size}
    for item in [t for t in text.split(",") if t.strip()]:
        name, _, raw = item.partition("=")
        name, raw = name.strip(), raw.strip()
        if name not in fields or name == "size" or not raw:
            known = ", ".join(n for n in fields if n != "size")
            raise ValueError(
                f"--scene {item!r}: give field=value (low:high for a range) for one of {known}"
            )
        default = getattr(spec_class, name)
        try:
            if isinstance(default, tuple):
                low, sep, high = raw.partition(":")
                pair = (float(low), float(high)) if sep else ()
                kind = type(default[0])
                if not pair or (kind is int and any(v != int(v) for v in pair)):
                    raise ValueError(raw)
                values[name] = tuple(kind(v) for v in pair)
            elif isinstance(default, bool):
                if raw.lower() not in ("0", "1", "true", "false"):
                    raise ValueError(raw)
                values[name] = raw.lower() in ("1", "true")
            else:
                values[name] = type(default)(float(raw)) if isinstance(default, int) else float(raw)
        except ValueError:
            form = "low:high range" if isinstance(default, tuple) else "value"
            raise ValueError(f"--scene {item!r}: {raw!r} is not a valid {name} {form}") from None
    return spec_class(**values).validate()


def segment_id(category_id: int, index: int) -> int:
    """Segment id of a scene: ``1000 * category + index`` (index 0 for the one stuff segment of
    a category), unique within the image and never 0."""
    return 1000 * category_id + index


def _smooth_field(rng, size: int, cells: int) -> np.ndarray:
    """A smooth random field of shape (size, size): noise on a ``cells`` grid, cubic zoom."""
    coarse = rng.standard_normal((cells + 3, cells + 3))
    field = ndimage.zoom(coarse, (size + 2 * size // cells) / (cells + 3), order=3)
    offset = size // cells
    return field[offset : offset + size, offset : offset + size]


def _stuff_layout(rng, spec: SceneSpec) -> np.ndarray:
    """Category id of the stuff at each pixel, with irregular two-scale boundaries."""
    count = int(rng.integers(spec.stuff_classes[0], spec.stuff_classes[1] + 1))
    chosen = rng.choice(STUFF_IDS, size=count, replace=False)
    fields = np.stack(
        [
            _smooth_field(rng, spec.size, 3) + 0.35 * _smooth_field(rng, spec.size, 12)
            for _ in chosen
        ]
    )
    while True:  # a class left with a sliver is dropped, its pixels go to its neighbours
        layout = np.argmax(fields, axis=0)
        areas = np.bincount(layout.ravel(), minlength=len(chosen))
        if areas.min() >= 4 * spec.min_area or len(chosen) == 1:
            return np.asarray(chosen)[layout]
        keep = areas != areas.min()
        keep[np.argmax(areas)] = True
        chosen, fields = chosen[keep], fields[keep]


def _bezier(points: np.ndarray, samples: int) -> np.ndarray:
    """Points of the cubic Bezier curve with control points ``points`` (4, 2): (samples, 2)."""
    t = np.linspace(0.0, 1.0, samples)[:, None]
    p0, p1, p2, p3 = points
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def _curve_points(rng, spec: "SceneSpec", through=None) -> np.ndarray:
    """A long curve: endpoints on opposite halves, optionally bent to pass through ``through``."""
    size = spec.size
    angle = rng.uniform(0, 2 * math.pi)
    centre = np.array([size / 2, size / 2]) + rng.uniform(-0.15, 0.15, 2) * size
    half = rng.uniform(*spec.curve_length) / 2 * size
    direction = np.array([math.cos(angle), math.sin(angle)])
    p0, p3 = centre - half * direction, centre + half * direction
    bend = rng.uniform(-0.45, 0.45, (2, 2)) * size
    p1, p2 = p0 + (p3 - p0) / 3 + bend[0], p0 + 2 * (p3 - p0) / 3 + bend[1]
    if through is not None:
        # B(1/2) = (p0 + 3 p1 + 3 p2 + p3) / 8: shift p1 and p2 alike so that B(1/2) = through.
        shift = (8 * np.asarray(through) - p0 - 3 * p1 - 3 * p2 - p3) / 6
        p1, p2 = p1 + shift, p2 + shift
    return np.clip(np.stack([p0, p1, p2, p3]), -0.3 * size, 1.3 * size)


def _mask(size: int, draw) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw(ImageDraw.Draw(canvas))
    return np.asarray(canvas) > 0


def _curve_mask(rng, spec: SceneSpec, points: np.ndarray) -> np.ndarray:
    width = max(2, int(round(rng.uniform(*spec.curve_width) * spec.size)))
    path = [tuple(p) for p in _bezier(points, 160)]
    return _mask(spec.size, lambda d: d.line(path, fill=255, width=width, joint="curve"))


def _shape_mask(rng, spec: SceneSpec, category: int, centre) -> np.ndarray:
    radius = rng.uniform(*spec.shape_radius) * spec.size
    if category == ELLIPSE:
        angles = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        radii = np.stack([radius * np.ones(48), radius * rng.uniform(0.45, 1.0) * np.ones(48)])
    else:  # a triangle or quadrilateral: corners that tell it from an ellipse at this size
        corners = int(rng.integers(3, 5))
        spread = 2 * math.pi * np.arange(corners) / corners + rng.uniform(-0.35, 0.35, corners)
        angles = rng.uniform(0, 2 * math.pi) + spread  # no sliver: corners spread round
        radii = np.stack([radius * rng.uniform(0.75, 1.0, corners)] * 2)
    turn = rng.uniform(0, math.pi)
    x = radii[0] * np.cos(angles)
    y = radii[1] * np.sin(angles)
    xy = np.stack(
        [x * math.cos(turn) - y * math.sin(turn), x * math.sin(turn) + y * math.cos(turn)]
    )
    outline = [tuple(p) for p in (xy.T + np.asarray(centre))]
    return _mask(spec.size, lambda d: d.polygon(outline, fill=255))


def _random_colour(rng) -> np.ndarray:
    return rng.uniform(20, 235, 3).astype(np.float32)


def _things(rng, spec: SceneSpec) -> List[dict]:
    """Things in depth order (back to front): dicts with category, mask and colour."""
    things = []
    curve_colour = _random_colour(rng)
    trail = []  # points on the curves drawn so far, for crossings
    for _ in range(int(rng.integers(spec.curves[0], spec.curves[1] + 1))):
        through = trail[int(rng.integers(len(trail)))] if trail and rng.random() < 0.8 else None
        points = _curve_points(rng, spec, through)
        inside = [p for p in _bezier(points, 24)[4:-4] if (0 <= p).all() and (p < spec.size).all()]
        trail.extend(inside)
        colour = curve_colour
        if spec.curve_same_colour < 1 and rng.random() >= spec.curve_same_colour:
            colour = _random_colour(rng)  # (at 1, no number is drawn: the default's scenes stay)
        things.append(dict(category=CURVE, mask=_curve_mask(rng, spec, points), colour=colour))
    for _ in range(int(rng.integers(spec.shapes[0], spec.shapes[1] + 1))):
        category = int(rng.choice([ELLIPSE, POLYGON]))
        shapes = [t for t in things if t["category"] != CURVE]
        if shapes and rng.random() < spec.shape_touch:  # touch/overlap a same-coloured neighbour
            other = shapes[int(rng.integers(len(shapes)))]
            ys, xs = np.nonzero(other["mask"])
            k = int(rng.integers(len(xs))) if len(xs) else 0
            centre = (xs[k], ys[k]) if len(xs) else rng.uniform(0, spec.size, 2)
            colour = other["colour"]
        else:
            centre, colour = rng.uniform(0.1, 0.9, 2) * spec.size, _random_colour(rng)
        things.append(
            dict(category=category, mask=_shape_mask(rng, spec, category, centre), colour=colour)
        )
    order = rng.permutation(len(things))
    if spec.curves_behind:  # the same draws; only the depth order changes
        order = sorted(order, key=lambda i: things[i]["category"] != CURVE)
    return [things[i] for i in order]


def _paint(stuff: np.ndarray, things: List[dict]) -> Tuple[np.ndarray, List[int]]:
    """Segment-id map with ``things`` painted in order over the stuff, and each thing's id."""
    ids = segment_id(stuff.astype(np.uint32), 0)
    counts: Dict[int, int] = {}
    thing_ids = []
    for thing in things:
        counts[thing["category"]] = counts.get(thing["category"], 0) + 1
        thing_ids.append(segment_id(thing["category"], counts[thing["category"]]))
        ids[thing["mask"]] = thing_ids[-1]
    return ids, thing_ids


def _layout(rng, spec: SceneSpec):
    """The segment-id map, the things kept and their ids; small visible things removed."""
    stuff = _stuff_layout(rng, spec)
    things = _things(rng, spec)
    while True:
        ids, thing_ids = _paint(stuff, things)
        areas = [(ids == i).sum() for i in thing_ids]
        keep = [t for t, a in zip(things, areas) if a >= spec.min_area]
        if len(keep) == len(things):
            return stuff, ids, things, thing_ids
        things = keep  # removing a thing only uncovers pixels: repeat until all are kept


def _texture(rng, category: int, size: int) -> np.ndarray:
    """The (size, size) luminance texture of a stuff class, zero mean, 0-255 scale."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    if category == 11:  # meadow: fine oriented stripes
        return 18 * np.sin(u * 2 * math.pi / rng.uniform(4, 7))
    if category == 12:  # water: slow waves bent by a smooth field
        return 14 * np.sin(u * 2 * math.pi / rng.uniform(14, 24) + 3 * _smooth_field(rng, size, 4))
    if category == 13:  # sand: blurred grain
        return 50 * ndimage.gaussian_filter(rng.standard_normal((size, size)), 0.8)
    period = rng.uniform(10, 16)  # tiles: a grid of dark joints
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    joints = (np.mod(u, period) < 2) | (np.mod(v, period) < 2)
    return np.where(joints, -30.0, 6.0).astype(np.float32)


def _render(rng, spec: SceneSpec, stuff, ids, things, thing_ids) -> np.ndarray:
    size = spec.size
    image = np.zeros((size, size, 3), dtype=np.float32)
    for category in np.unique(stuff):
        where = stuff == category
        colour = BASE_COLOR[int(category)] + rng.uniform(-25, 25, 3)
        image[where] = colour + _texture(rng, int(category), size)[where][:, None]
    shade = 10 * _smooth_field(rng, size, 2)
    for thing, thing_id in zip(things, thing_ids):
        where = ids == thing_id
        image[where] = thing["colour"] + shade[where][:, None]
    image += rng.normal(0, spec.noise, image.shape) if spec.noise else 0
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def make_scene(rng: np.random.Generator, spec: SceneSpec = SceneSpec()):
    """Draw one scene.

    Args:
        rng: the random generator (the scene is a pure function of its state).
        spec: what the scene may contain.

    Returns:
        (image, ids, segments): the RGB image, uint8 (size, size, 3); the segment-id map,
        uint32 (size, size), 0 nowhere (every pixel is stuff or a thing); and the segments as
        dicts with ``id`` and ``category_id``, stuff first, then things back to front.
    """
    stuff, ids, things, thing_ids = _layout(rng, spec)
    image = _render(rng, spec, stuff, ids, things, thing_ids)
    present = set(np.unique(ids).tolist())
    segments = [
        {"id": segment_id(int(c), 0), "category_id": int(c)}
        for c in sorted(set(np.unique(stuff).tolist()))
        if segment_id(int(c), 0) in present
    ]
    segments += [{"id": i, "category_id": t["category"]} for t, i in zip(things, thing_ids)]
    return image, ids, segments

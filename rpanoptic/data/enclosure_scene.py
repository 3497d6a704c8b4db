"""A synthetic panoptic scene whose right answer depends on image content far away: enclosure.

Thin contours are drawn on one texture. Each is a wobbly loop; about half are closed, the others
have a short gap somewhere along their length. The panoptic labels ask whether a place is
enclosed:

- stuff: ``inside`` for the pixels a *closed* contour encloses, ``outside`` everywhere else,
  the interior of an open contour included. Both regions have the same texture, and a stretch
  of an open contour looks like a stretch of a closed one: near most of its length only the
  whole loop tells the two apart (the insideness problem of Ullman, and of the hGRU papers);
- things: small tokens of one shape and colour per image, inside loops and outside them. A
  token enclosed by a closed contour is an ``enclosed`` token, any other a ``free`` token. The
  gap of an open contour lies where the loop is farthest from the tokens it surrounds, so no
  token's neighbourhood shows whether its loop is closed;
- the contours themselves are unlabeled (segment id 0, VOID in COCO panoptic), so that nothing
  thinner than the semantic head's stride is asked for.

The heads can represent this answer: the stuff regions are large and smooth, and each token is
a compact blob that a 28 x 28 mask holds (:func:`head_ceiling` measures it). What they must
learn is the category, and the stuff label of a loop's interior, from a contour that may be
closed or open half a loop away.

Everything is drawn from a ``numpy.random.Generator``: a scene is a pure function of its seed.
"""

import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

__all__ = [
    "ENCLOSURE_CATEGORIES",
    "ENCLOSED",
    "FREE",
    "INSIDE",
    "LOOP_INTERIOR",
    "OUTSIDE",
    "EnclosureSpec",
    "make_enclosure_scene",
]

ENCLOSED, FREE, OUTSIDE, INSIDE = 1, 2, 11, 12
LOOP_INTERIOR = {"closed loop": 1, "open loop": 2}  # the ``interiors`` map of a scene's layout
ENCLOSURE_CATEGORIES = [
    {"id": ENCLOSED, "name": "enclosed", "isthing": 1, "color": [230, 25, 75],
     "supercategory": "token"},
    {"id": FREE, "name": "free", "isthing": 1, "color": [0, 130, 200], "supercategory": "token"},
    {"id": OUTSIDE, "name": "outside", "isthing": 0, "color": [200, 180, 120],
     "supercategory": "ground"},
    {"id": INSIDE, "name": "inside", "isthing": 0, "color": [110, 160, 60],
     "supercategory": "ground"},
]  # fmt: skip


@dataclass(frozen=True)
class EnclosureSpec:
    """What an enclosure scene may contain. Ranges are inclusive (low, high); lengths are
    fractions of the image size unless they say px."""

    size: int = 160
    loops: Tuple[int, int] = (1, 3)
    closed: float = 0.5  # probability that a loop is closed
    loop_radius: Tuple[float, float] = (0.16, 0.3)
    wobble: float = 0.25  # relative amplitude of the loop's radial wobble
    thickness: int = 2  # px, the contour's width
    gap: Tuple[int, int] = (6, 9)  # px, the length of an open loop's gap
    gap_far: float = 0.8  # the gap lies where the loop is this near its greatest distance from
    # the tokens it surrounds (a fraction of that greatest distance)
    tokens_inside: Tuple[int, int] = (1, 2)  # tokens in each loop
    tokens_outside: Tuple[int, int] = (1, 3)
    token_radius: Tuple[int, int] = (4, 6)  # px
    margin: int = 3  # px between a token and a contour or another token
    noise: float = 6.0

    def validate(self) -> "EnclosureSpec":
        """Raise ValueError naming the field when a value cannot make a scene."""
        checks = {
            "size": self.size >= 64,
            "loops": 1 <= self.loops[0] <= self.loops[1],
            "closed": 0 <= self.closed <= 1,
            "loop_radius": 0 < self.loop_radius[0] <= self.loop_radius[1] < 0.45,
            "wobble": 0 <= self.wobble < 0.6,
            "thickness": self.thickness >= 1,
            "gap": self.thickness < self.gap[0] <= self.gap[1],
            "gap_far": 0 <= self.gap_far <= 1,
            "tokens_inside": 0 <= self.tokens_inside[0] <= self.tokens_inside[1],
            "tokens_outside": 0 <= self.tokens_outside[0] <= self.tokens_outside[1],
            "token_radius": 1 <= self.token_radius[0] <= self.token_radius[1],
            "margin": self.margin >= 1,
            "noise": self.noise >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"enclosure scene: {name}={getattr(self, name)!r} is invalid")
        return self


def _loop(rng, spec: EnclosureSpec, centre, radius) -> np.ndarray:
    """Points (n, 2) of a closed wobbly loop around ``centre``: r(theta) with 3 harmonics."""
    n = max(64, int(2 * math.pi * radius))
    theta = np.linspace(0, 2 * math.pi, n, endpoint=False)
    r = np.ones(n)
    for k in (2, 3, 4):
        r += spec.wobble / k * rng.uniform(-1, 1) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    r *= radius
    return np.stack([centre[0] + r * np.cos(theta), centre[1] + r * np.sin(theta)], axis=1)


def _draw(size: int, fn) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    fn(ImageDraw.Draw(canvas))
    return np.asarray(canvas) > 0


def _line(draw, path, width: int) -> None:
    draw.line(path, fill=1, width=width, joint="curve")


def _place_loops(rng, spec: EnclosureSpec) -> List[dict]:
    """Non-overlapping loops (rejection sampling on their outer radii)."""
    size, count = spec.size, int(rng.integers(spec.loops[0], spec.loops[1] + 1))
    loops = []
    for _ in range(200):
        if len(loops) == count:
            break
        radius = rng.uniform(*spec.loop_radius) * size
        outer = radius * (1 + spec.wobble) + spec.thickness + 2
        centre = rng.uniform(outer, size - outer, 2)
        if all(np.hypot(*(centre - o["centre"])) > outer + o["outer"] for o in loops):
            points = _loop(rng, spec, centre, radius)
            loops.append({"centre": centre, "outer": outer, "points": points})
    return loops


def _disc(size: int, centre, radius) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2


def _place_token(rng, spec, allowed: np.ndarray, taken: np.ndarray):
    """A token (centre, radius, mask) whose disc plus margin lies in ``allowed`` and clear of
    ``taken``; None when none fits."""
    radius = int(rng.integers(spec.token_radius[0], spec.token_radius[1] + 1))
    room = ndimage.binary_erosion(allowed & ~taken, iterations=radius + spec.margin)
    ys, xs = np.nonzero(room)
    if len(xs) == 0:
        return None
    k = int(rng.integers(len(xs)))
    centre = np.array([xs[k], ys[k]], dtype=float)
    return {"centre": centre, "radius": radius, "mask": _disc(spec.size, centre, radius)}


def _open_gap(rng, spec: EnclosureSpec, loop: dict, tokens: List[dict]) -> None:
    """Cut a gap in ``loop``'s points, where the loop is farthest from the tokens it surrounds
    (within ``gap_far`` of the greatest distance; anywhere when it surrounds none). Where it
    falls depends only on the tokens, and every open loop gets one, so closure is independent
    of the loop's size and of where its tokens are."""
    points, n = loop["points"], len(loop["points"])
    distance = np.full(n, np.inf)
    for token in tokens:
        distance = np.minimum(distance, np.hypot(*(points - token["centre"]).T))
    far = distance >= spec.gap_far * distance.max() if tokens else np.ones(n, dtype=bool)
    start = int(rng.choice(np.nonzero(far)[0]))
    step = np.hypot(*(np.roll(points, -1, axis=0) - points).T)
    length = rng.uniform(spec.gap[0], spec.gap[1]) + spec.thickness  # round caps close it by one
    cut, total = [], 0.0
    while total < length:
        cut.append((start + len(cut)) % n)
        total += step[cut[-1]]
    loop["points"] = np.roll(points, -(cut[-1] + 1), axis=0)[: n - len(cut)]


def _layout(rng, spec: EnclosureSpec):
    """The loops (closed or not), the tokens with their categories, and the stuff map."""
    size = spec.size
    loops = _place_loops(rng, spec)
    interiors, outlines = [], np.zeros((size, size), dtype=bool)
    for loop in loops:
        poly = [tuple(p) for p in loop["points"]]
        loop["filled"] = _draw(size, lambda d, poly=poly: d.polygon(poly, fill=1))
        interiors.append(loop["filled"])
        outline = _draw(size, lambda d, poly=poly: _line(d, poly + poly[:1], spec.thickness))
        outlines |= ndimage.binary_dilation(outline, iterations=spec.margin)
    tokens, taken = [], np.zeros((size, size), dtype=bool)

    def place(count_range, allowed, loop):
        nonlocal taken
        for _ in range(int(rng.integers(count_range[0], count_range[1] + 1))):
            token = _place_token(rng, spec, allowed & ~outlines, taken)
            if token is not None:
                tokens.append(dict(token, loop=loop))
                taken = taken | ndimage.binary_dilation(token["mask"], iterations=spec.margin)

    for loop, inside in zip(loops, interiors):
        place(spec.tokens_inside, inside, loop)
    anywhere_outside = ~np.any(interiors, axis=0) if interiors else np.ones((size, size), bool)
    place(spec.tokens_outside, anywhere_outside, None)
    for loop in loops:
        own = [t for t in tokens if t["loop"] is loop]
        loop["closed"] = bool(rng.random() < spec.closed)
        if not loop["closed"]:
            _open_gap(rng, spec, loop, own)
    return loops, tokens


def _contours(size: int, spec: EnclosureSpec, loops: List[dict]) -> np.ndarray:
    contour = np.zeros((size, size), dtype=bool)
    for loop in loops:
        pts = [tuple(p) for p in loop["points"]]
        path = pts + pts[:1] if loop["closed"] else pts
        contour |= _draw(size, lambda d, path=path: _line(d, path, spec.thickness))
    return contour


def _enclosed(size: int, contour: np.ndarray) -> np.ndarray:
    """Pixels not connected to the image border without crossing the contour (4-connected):
    the interiors of closed loops."""
    free = ~contour
    labels, _ = ndimage.label(free)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return free & ~np.isin(labels, border[border > 0])


def make_enclosure_scene(
    rng: np.random.Generator, spec: EnclosureSpec = EnclosureSpec(), layout: bool = False
):
    """Draw one enclosure scene.

    Returns:
        (image, ids, segments) as :func:`rpanoptic.data.synthetic_scene.make_scene`: the RGB
        image, uint8 (size, size, 3); the segment-id map, uint32 (size, size), 0 on the
        contours (VOID); the segments as dicts with ``id`` and ``category_id``, stuff first.
        With ``layout``, also a dict saying where things are, for scoring the parts whose answer
        needs the whole loop: ``tokens``, {token segment id: "closed loop", "open loop" or
        "no loop"}; ``interiors``, uint8 (size, size), :data:`LOOP_INTERIOR` of the loop whose
        polygon holds the pixel (contour pixels included), 0 outside every loop.
    """
    size = spec.size
    loops, tokens = _layout(rng, spec)
    contour = _contours(size, spec, loops)
    inside = _enclosed(size, contour)
    ids = np.where(inside, 1000 * INSIDE, 1000 * OUTSIDE).astype(np.uint32)
    segments = [
        {"id": 1000 * c, "category_id": c} for c in (OUTSIDE, INSIDE) if (ids == 1000 * c).any()
    ]
    counts: Dict[int, int] = {}
    for token in tokens:
        category = ENCLOSED if inside[token["mask"]].all() else FREE
        counts[category] = counts.get(category, 0) + 1
        token["id"] = 1000 * category + counts[category]
        ids[token["mask"]] = token["id"]
        segments.append({"id": token["id"], "category_id": category})
    ids[contour] = 0
    segments = [s for s in segments if (ids == s["id"]).any()]
    image = _render(rng, spec, contour, tokens)
    if not layout:
        return image, ids, segments
    tokens = {
        t["id"]: (
            "no loop"
            if t["loop"] is None
            else ("closed" if t["loop"]["closed"] else "open") + " loop"
        )
        for t in tokens
    }
    interiors = np.zeros((size, size), dtype=np.uint8)
    for loop in loops:
        interiors[loop["filled"]] = LOOP_INTERIOR["closed loop" if loop["closed"] else "open loop"]
    return image, ids, segments, {"tokens": tokens, "interiors": interiors}


def _render(rng, spec: EnclosureSpec, contour: np.ndarray, tokens: List[dict]) -> np.ndarray:
    """One texture everywhere (inside and outside alike), dark contours (the only pixels below
    about 100 in mean intensity), tokens of one colour."""
    size = spec.size
    ground = np.array([185.0, 175.0, 150.0]) + rng.uniform(-30, 30, 3)
    grain = 25 * ndimage.gaussian_filter(rng.standard_normal((size, size)), 1.0)
    image = np.broadcast_to(ground, (size, size, 3)) + grain[..., None]
    image = np.array(image, dtype=np.float32)
    image[contour] = np.array([40.0, 40.0, 50.0]) + rng.uniform(-15, 15, 3)
    colour = rng.uniform(30, 230, 3)
    # Tokens stand out from the ground and are never as dark as the contours.
    while np.abs(colour - ground).max() < 60 or colour.mean() < 110:
        colour = rng.uniform(30, 230, 3)
    for token in tokens:
        image[token["mask"]] = colour
    if spec.noise:
        image += rng.normal(0, spec.noise, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)

#!/usr/bin/env python
"""Can a recurrence learn closure at the resolution where the RFPN runs, and in how many
steps? The enclosure question alone, without Panoptic FPN around it.

Each model reads a whole enclosure scene (``rpanoptic.data.enclosure_scene``) through a strided
convolutional stem (to stride 4, p2's, or 8, p3's) and labels each cell of the ground ``inside``
or ``outside``, trained with a per-cell cross-entropy on the cells that are mostly ground. The
score is the interior closure of ``rpanoptic.evaluation.enclosure``: on the cells inside a
loop's outline, the share labelled right, balanced over closed and open loops (50 = every loop
treated alike). The models:

- ``hgru``: the stem, then an hGRU (rpanoptic.recurrence) run for N steps, trained with BPTT or
  C-RBP; scored at t = N and beyond;
- ``ff``: the stem, then as many convolutions of the hGRU's kernel size as give the
  feed-forward model at least the hGRU's parameters (a fixed receptive field: 113 px at stride 8
  with 5 x 5 kernels).

Trained on one image size, each model is also scored, without retraining, on larger scenes
(``--test-sizes``: the loops grow with the image, the contours, gaps and tokens keep their
pixel sizes): a loop wider than a feed-forward model's receptive field cannot be judged by it,
while a recurrence may run more steps (t up to 6N). The weights are kept next to the result
(tens of kB) so that other sizes can be scored later.

One process per run, one JSON file per run in --results (skipped when present):

  python projects/SyntheticComparison/enclosure_probe.py --runs hgru_bptt_n20_s4,ff_s4
  python projects/SyntheticComparison/enclosure_probe.py --scene gap=14:20 --runs ...

A run's name says what it trains: ``hgru_<grad>_n<N>_s<stride>`` or ``ff_s<stride>``, with
``_k<kernel>`` for a kernel other than 5.
"""

import argparse
import dataclasses
import json
import os
import re
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from rpanoptic.data.enclosure_scene import (  # noqa: E402
    INSIDE,
    LOOP_INTERIOR,
    OUTSIDE,
    EnclosureSpec,
    make_enclosure_scene,
)
from rpanoptic.data.synthetic_scene import parse_scene  # noqa: E402
from rpanoptic.recurrence import HGRUCell, Recurrence  # noqa: E402
from rpanoptic.utils import atomic_write_json, provenance  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "enclosure", "probe")
NAME = re.compile(r"^(?:hgru_(bptt|crbp)_n(\d+)|ff)_s(4|8)(?:_k(\d+))?$")


def parse_run(name: str) -> dict:
    """``hgru_bptt_n20_s4`` -> {model, grad, steps, stride, kernel}; ValueError otherwise."""
    m = NAME.match(name)
    if not m:
        raise ValueError(
            f"run {name!r}: name it hgru_<bptt|crbp>_n<N>_s<4|8>[_k<kernel>] or ff_s<4|8>[_k<k>]"
        )
    grad, steps, stride, kernel = m.groups()
    return {
        "model": "hgru" if grad else "ff",
        "grad": grad or "",
        "steps": int(steps or 0),
        "stride": int(stride),
        "kernel": int(kernel or 5),
    }


def scenes(spec: EnclosureSpec, count: int, seed: int, stride: int):
    """(images (n, 3, S, S) float, labels (n, S/s, S/s): 1 inside, 0 outside, -1 not scored,
    interiors (n, S/s, S/s): the loop kind of each cell, 0 none)."""
    images, labels, interiors = [], [], []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        image, ids, _, layout = make_enclosure_scene(rng, spec, layout=True)
        category = torch.from_numpy((ids // 1000).astype(np.int64))
        fractions = []
        for value in (INSIDE, OUTSIDE):
            fractions.append(F.avg_pool2d((category == value)[None, None].float(), stride)[0, 0])
        inside, outside = fractions
        label = torch.where(inside > outside, 1, 0)
        label[(inside + outside) <= 0.5] = -1  # mostly token or contour
        kind = torch.from_numpy(layout["interiors"].astype(np.int64))
        votes = [F.avg_pool2d((kind == v)[None, None].float(), stride)[0, 0] for v in (1, 2)]
        interior = torch.zeros_like(label)
        interior[votes[0] > 0.5], interior[votes[1] > 0.5] = 1, 2
        images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255.0 - 0.5)
        labels.append(label)
        interiors.append(interior)
    return torch.stack(images), torch.stack(labels), torch.stack(interiors)


class Probe(nn.Module):
    def __init__(self, run: dict, channels: int):
        super().__init__()
        c, k = channels, run["kernel"]
        layers = [nn.Conv2d(3, c, 5, stride=2, padding=2), nn.GroupNorm(4, c), nn.ReLU()]
        for _ in range({4: 1, 8: 2}[run["stride"]]):
            layers += [nn.Conv2d(c, c, 3, stride=2, padding=1), nn.GroupNorm(4, c), nn.ReLU()]
        self.stem = nn.Sequential(*layers)
        if run["model"] == "hgru":
            cell = HGRUCell(c, k, norm="GN", timesteps=run["steps"], gn_groups=4)
            self.body = Recurrence(cell, run["steps"], grad=run["grad"], neumann_steps=15)
        else:
            hgru = sum(p.numel() for p in HGRUCell(c, k, gn_groups=4).parameters())
            depth = max(1, -(-hgru // (c * c * k * k + 3 * c)))
            body = []
            for _ in range(depth):
                body += [nn.Conv2d(c, c, k, padding=k // 2), nn.GroupNorm(4, c), nn.ReLU()]
            self.body = nn.Sequential(*body)
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, images):
        return self.head(self.body(self.stem(images)))


def closure(logits: torch.Tensor, labels: torch.Tensor, interiors: torch.Tensor) -> dict:
    right = (logits.argmax(1) == labels) & (labels >= 0)
    rates = {}
    for where, value in LOOP_INTERIOR.items():
        cells = (interiors == value) & (labels >= 0)
        rates[where] = 100.0 * right[cells].sum().item() / max(1, cells.sum().item())
    scored = labels >= 0
    return {
        "interior_closure": float(np.mean(list(rates.values()))),
        "closed_loop_right": rates["closed loop"],
        "open_loop_right": rates["open loop"],
        "cell_accuracy": 100.0 * right.sum().item() / max(1, scored.sum().item()),
    }


@torch.no_grad()
def evaluate(model, data, counts, batch: int = 50) -> dict:
    model.eval()
    images, labels, interiors = data
    out = {}
    for t in counts or [0]:
        if t:
            model.body.test_timesteps = t
        logits = torch.cat([model(images[i : i + batch]) for i in range(0, len(images), batch)])
        out[str(t)] = closure(logits, labels, interiors)
    model.train()
    return out


def score_sizes(model, run, spec, args) -> dict:
    """{size: {t: scores}} on ``args.val`` scenes of each of ``args.test_sizes``."""
    counts = [run["steps"] * k for k in (1, 2, 3, 6)] if run["steps"] else []
    out = {}
    for size in [int(x) for x in args.test_sizes.split(",") if x]:
        data = scenes(dataclasses.replace(spec, size=size), args.val, 1, run["stride"])
        out[str(size)] = evaluate(model, data, counts, batch=max(1, 50 * 160**2 // size**2))
    return out


def train_one(name, spec, args, weights: str = "") -> dict:
    run = parse_run(name)
    torch.manual_seed(args.seed)
    train = scenes(spec, args.train, 0, run["stride"])
    val = scenes(spec, args.val, 1, run["stride"])
    model = Probe(run, args.channels)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    counts = [run["steps"], 2 * run["steps"], 3 * run["steps"]] if run["steps"] else []
    history, start = [], time.perf_counter()
    g = torch.Generator().manual_seed(args.seed)
    for it in range(1, args.iters + 1):
        pick = torch.randint(len(train[0]), (args.batch,), generator=g)
        logits = model(train[0][pick])
        loss = F.cross_entropy(logits, train[1][pick], ignore_index=-1)
        if run["grad"] == "crbp":
            loss = loss + args.lcp_weight * model.body.lcp
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if it % args.eval_period == 0 or it == args.iters:
            scores = evaluate(model, val, counts[:1])
            score = next(iter(scores.values()))
            history.append([it, round(loss.item(), 4), round(score["interior_closure"], 2)])
            closed = score["interior_closure"]
            print(f"{name} iter {it} loss {loss.item():.4f} closure {closed:.1f}", flush=True)
    if weights:
        os.makedirs(os.path.dirname(weights), exist_ok=True)
        torch.save(model.state_dict(), weights)
    return {
        "run": name,
        **run,
        "scene": {k: v for k, v in vars(spec).items()},
        "iters": args.iters,
        "batch": args.batch,
        "train_images": args.train,
        "params": sum(p.numel() for p in model.parameters()),
        "train_s": round(time.perf_counter() - start, 1),
        "val": evaluate(model, val, counts),
        "sizes": score_sizes(model, run, spec, args),
        "history": history,
        "provenance": provenance("cpu"),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", required=True, help="comma-separated run names (see above)")
    p.add_argument("--scene", default="", help="enclosure scene fields, e.g. gap=14:20")
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--train", type=int, default=2000, help="training scenes")
    p.add_argument("--val", type=int, default=200, help="validation scenes")
    p.add_argument("--iters", type=int, default=3000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--lcp-weight", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-period", type=int, default=250)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--test-sizes", default="160,240,320", help="also score on scenes of these sizes (px)"
    )
    p.add_argument("--results", default=RESULTS, help="one JSON per run (existing ones skipped)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        spec = parse_scene(args.scene, args.size, EnclosureSpec)
        names = [n for n in args.runs.split(",") if n]
        for n in names:
            parse_run(n)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tag = args.scene.replace("=", "").replace(":", "-").replace(",", "_") or "default"
    for name in names:
        path = os.path.join(args.results, tag, f"{name}_seed{args.seed}.json")
        if os.path.isfile(path):
            print(f"skip {name}: {path} exists")
            continue
        result = train_one(name, spec, args, path[: -len(".json")] + ".pth")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_json(path, result, indent=1)
        print(f"{name}: {json.dumps(result['val'])} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

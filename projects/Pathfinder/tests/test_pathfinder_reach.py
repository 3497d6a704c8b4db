"""The cue-reach diagnostic: geodesic distances along a path, and the cue's influence binned by
them, checked on hand-made paths and on a model whose reach is known exactly."""

import math

import pytest
import torch
import torch.nn.functional as F
from pathfinder.data import PathfinderSplit
from pathfinder.reach import REACH_BIN, cue_reach, draw_cue_reach, path_distance
from torch import nn

from rpanoptic.recurrence import Recurrence


def _dashed_l(size=24):
    """An L-shaped dashed path (dashes of 2 px, gaps of 1 px) and a cue at its first end."""
    target = torch.zeros(size, size, dtype=torch.bool)
    for x in range(2, 20):
        if x % 3 != 1:  # gaps at x = 4, 7, ...
            target[2, x] = True
    for y in range(3, 20):
        if y % 3 != 1:
            target[y, 19] = True
    cue = torch.zeros_like(target)
    cue[2, 2] = True
    return target, cue


def test_path_distance_follows_the_path_across_its_gaps():
    target, cue = _dashed_l()
    dist = path_distance(target, cue)
    assert dist[2, 2] == 0 and dist[2, 3] == 1 and dist[2, 5] == 3  # across the gap at x = 4
    assert dist[2, 18] == 16
    # Down the second arm: around the corner (about 16 + 15 steps), not straight across, which
    # takes 17 steps of 8-connected moves.
    assert 28 <= dist[18, 19] <= 32
    assert math.isinf(dist[10, 10]) and math.isinf(dist[0, 0])  # off the path
    lonely = torch.zeros_like(target)
    lonely[15, 5] = True  # a path pixel the walk cannot reach
    assert math.isinf(path_distance(target | lonely, cue)[15, 5])


class _Blur(nn.Module):
    """Logit = 4 x the box sum of the cue over a (2r+1)^2 window: the cue changes exactly the
    pixels within r (Chebyshev) of it, and no other."""

    def __init__(self, r):
        super().__init__()
        self.r = r

    def forward(self, x):
        k = 2 * self.r + 1
        return 4 * k * k * F.avg_pool2d(x[:, 1:2], k, stride=1, padding=self.r)


def test_cue_reach_is_zero_beyond_the_models_reach():
    target, cue = _dashed_l()
    image = target.float()
    x = torch.stack([image, cue.float()])[None].repeat(3, 1, 1, 1)
    data = PathfinderSplit(x, torch.ones(3), target[None, None].float().repeat(3, 1, 1, 1))
    out = cue_reach(_Blur(r=5), data, counts=(1, 10))
    assert out["bin"] == REACH_BIN and set(out["influence"]) == {1}  # no recurrence: one pass
    influence = out["influence"][1]
    dist = path_distance(target, cue)
    expected_pixels = torch.bincount((dist[target] // REACH_BIN).long()).tolist()
    assert out["pixels"] == [3 * p for p in expected_pixels]
    # Along the first arm, within 5 px of the cue: changed; from 8 px on: untouched.
    assert influence[0] > 0.05 and influence[1] > 0
    assert all(v == 0 for v in influence[2:])
    # Binned means equal the direct mean of |change| over the bin's pixels.
    change = (torch.sigmoid(_Blur(5)(x)) - torch.sigmoid(torch.zeros(1)))[0, 0].abs()
    first = change[(dist < REACH_BIN) & target].mean().item()
    assert influence[0] == pytest.approx(first, abs=1e-5)
    with pytest.raises(ValueError, match="trace-task"):
        cue_reach(_Blur(5), PathfinderSplit(x[:, :1], torch.ones(3)), counts=(1,))


class _Front(nn.Module):
    """A cell whose state is a front spreading from the cue along the path, 2 px a step (a 5 x 5
    max-pool, which steps over 1 px gaps): h' = cue + 0.9 path * maxpool(h). Channel 0 only."""

    def forward(self, x, h):
        spread = F.max_pool2d(h[:, :1], 5, stride=1, padding=2)
        front = x[:, 1:2] + 0.9 * x[:, :1] * spread
        return torch.cat([front.clamp(max=1), torch.zeros_like(front)], 1)


class _Tracer(nn.Module):
    def __init__(self):
        super().__init__()
        self.recurrence = Recurrence(_Front(), timesteps=2, grad="bptt")

    def forward(self, x):
        return 8 * self.recurrence(x)[:, :1] - 4


def test_cue_reach_follows_a_recurrence_step_by_step(tmp_path):
    """A front spreading from the cue: the influence at each count asked for equals the binned
    mean of |p(with cue) - p(without)| computed by running the cell by hand that many steps,
    and it reaches further along the path with more steps."""
    target, cue = _dashed_l()
    x = torch.stack([target.float(), cue.float()])[None]
    data = PathfinderSplit(x, torch.ones(1), target[None, None].float())
    out = cue_reach(_Tracer(), data, counts=(1, 5, 12))
    dist = path_distance(target, cue)
    cell, uncued = _Front(), x.clone()
    uncued[:, 1] = 0

    def run(inp, t):
        h = torch.zeros_like(inp)
        for _ in range(t):
            h = cell(inp, h)
        return torch.sigmoid(8 * h[0, 0] - 4)

    reached = []
    for t in (1, 5, 12):
        change = (run(x, t) - run(uncued, t)).abs()
        for b, value in enumerate(out["influence"][t]):
            inside = target & (dist >= b * REACH_BIN) & (dist < (b + 1) * REACH_BIN)
            assert value == pytest.approx(change[inside].mean().item(), abs=1e-5), (t, b)
        reached.append(sum(v > 0.01 for v in out["influence"][t]))
    assert reached[0] < reached[1] < reached[2]
    assert out["influence"][12][0] > 0.3 and out["influence"][1][1] == 0
    path = draw_cue_reach(
        {"front": {"records": [out, out], "steps": [5, 12]}}, str(tmp_path / "r.png"), "test"
    )
    assert (tmp_path / "r.png").stat().st_size > 2000 and path.endswith("r.png")

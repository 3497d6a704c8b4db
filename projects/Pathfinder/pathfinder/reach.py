"""How far along the cued path does the cue reach? A diagnostic of the trace task.

Tracing needs the cue's effect to travel along the path: a pixel of the cued path can only be
told from a distractor's pixel by what arrives from the cue. For a trained model and step count
t, the *influence* on a pixel is |p_t(x) - p_t(x without the cue)|, the change the cue makes to
that pixel's predicted probability of being on the cued path. It is averaged over the pixels of
the cued path, binned by their distance from the cue *along the path* (geodesic, in px: a
breadth-first search over the path's mask, 8-connected, grown by one pixel so that it steps over
the dashes' gaps). A model whose influence falls to zero a few pixels from the cue cannot trace
paths longer than that, however it was trained.

For a contractive step this reach is limited. The cue's effect on the fixed point is
(I - J)^-1 dF/dx applied to it, a sum of J^k terms that each carry it one step's kernel
further. When ||J|| <= rho < 1 the k-th term is at most rho^k of the first, so the effect that
arrives k kernels away is damped by rho^k, while a BPTT model with rho > 1 can keep a travelling
front at full strength up to its trained N.
"""

import contextlib
from collections import deque
from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rpanoptic.utils import pyplot

from .data import PathfinderSplit

__all__ = ["REACH_BIN", "path_distance", "cue_reach", "draw_cue_reach"]

REACH_BIN = 4
"""Width (px along the path) of the distance bins of :func:`cue_reach`."""


def path_distance(target: torch.Tensor, cue: torch.Tensor) -> torch.Tensor:
    """Geodesic distance (steps of 8-connected moves) from the cue to every pixel of the path.

    Args:
        target: (H, W) bool mask of the cued path.
        cue: (H, W) bool mask of the cue (the start of the search).

    Returns:
        (H, W) float tensor: the distance on the path's pixels reachable from the cue, inf on
        every other pixel. The search walks the path's mask grown by one pixel (3 x 3), so that
        it crosses the 1-2 px gaps between dashes; distances are counted on that walk.
    """
    grown = F.max_pool2d(target[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0
    walk = (grown | cue).numpy()
    dist = np.full(walk.shape, np.inf)
    queue = deque()
    for y, x in zip(*np.nonzero(cue.numpy())):
        dist[y, x] = 0.0
        queue.append((y, x))
    height, width = walk.shape
    while queue:
        y, x = queue.popleft()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ny, nx = y + dy, x + dx
                if 0 <= ny < height and 0 <= nx < width and walk[ny, nx]:
                    if dist[ny, nx] == np.inf:
                        dist[ny, nx] = dist[y, x] + 1
                        queue.append((ny, nx))
    dist = torch.from_numpy(dist).float()
    return torch.where(target, dist, torch.full_like(dist, float("inf")))


@torch.no_grad()
def cue_reach(
    model: torch.nn.Module, data: PathfinderSplit, counts: Sequence[int], images: int = 64
) -> Dict:
    """The cue's influence on the cued path against the distance along it (module docstring),
    on the first ``images`` examples of ``data`` (a trace-task split), after each step count
    in ``counts`` (feed-forward models: one pass, under the count 1).

    Returns ``{"bin": REACH_BIN, "pixels": [pixels per bin], "influence": {t: [mean per bin]}}``:
    bin i holds the path pixels at distances [i * bin, (i + 1) * bin); bins with no pixel are
    left out at the end only (a bin inside may still be empty, and then holds None).
    """
    if data.target is None:
        raise ValueError("cue_reach needs a trace-task split (with the cued path's mask)")
    model.eval()
    batch = data.take(slice(0, images))
    uncued = batch.x.clone()
    uncued[:, 1] = 0
    target, cue = batch.target[:, 0] > 0.5, batch.x[:, 1] > 0.5
    dist = torch.stack([path_distance(t.cpu(), c.cpu()) for t, c in zip(target, cue)])
    reached = torch.isfinite(dist)
    bins = (dist[reached] // REACH_BIN).long()
    nbins = int(bins.max()) + 1 if bins.numel() else 0
    pixels = torch.bincount(bins, minlength=nbins).float()
    rec = getattr(model, "recurrence", None)
    result = {"bin": REACH_BIN, "pixels": pixels.long().tolist(), "influence": {}}
    for t in counts if rec is not None else [1]:
        steps = rec.using(test_timesteps=t) if rec is not None else contextlib.nullcontext()
        with steps:
            change = torch.sigmoid(model(batch.x)) - torch.sigmoid(model(uncued))
        change = change[:, 0].abs().cpu()[reached]
        total = torch.bincount(bins, weights=change.double(), minlength=nbins)
        mean = (total / pixels.double()).tolist()  # 0 / 0 is NaN: an empty bin
        result["influence"][t] = [round(v, 5) if v == v else None for v in mean]
    return result


def _mean_curve(records: Sequence[Dict], t) -> np.ndarray:
    """Mean over records (seeds) of the influence at step count ``t``, bin by bin (NaN where
    no record has the bin)."""
    curves = [r["influence"].get(str(t), r["influence"].get(t)) for r in records]
    curves = [c for c in curves if c is not None]
    if not curves:
        return np.array([])
    length = max(len(c) for c in curves)
    table = np.full((len(curves), length), np.nan)
    for i, c in enumerate(curves):
        table[i, : len(c)] = [np.nan if v is None else v for v in c]
    with np.errstate(all="ignore"):
        counted = np.isfinite(table).sum(0)
        return np.where(counted > 0, np.nansum(table, 0) / np.maximum(counted, 1), np.nan)


def draw_cue_reach(curves: Dict[str, Dict], path: str, title: str = "") -> str:
    """One line per entry of ``curves`` (label -> {"records": [cue_reach results, one per
    seed], "steps": [step counts to draw; the first solid, the others dashed]}): the mean
    influence over the records against the distance along the path."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, entry in curves.items():
        records = entry["records"]
        width = records[0]["bin"]
        colour = None
        for k, t in enumerate(entry["steps"]):
            mean = _mean_curve(records, t)
            if not mean.size:
                continue
            x = (np.arange(mean.size) + 0.5) * width
            name = f"{label} ({len(records)}), t = {t}"
            line = ax.plot(x, mean, ls="-" if k == 0 else "--", color=colour, label=name)
            colour = line[0].get_color()
    ax.set_xlabel("distance from the cue along the cued path (px)")
    ax.set_ylabel("|p(with cue) - p(without cue)| on the path")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

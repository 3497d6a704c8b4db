"""The curve-tracing task of the recurrence engine's toy demo (``projects/CurveTracing/demo.py``,
which describes the task, the model and the defaults): data, the tracer model (conv stem, hGRU
``Recurrence``, 1x1 read-out), training in one learning mode, evaluation against inference
steps, and the recurrence's dynamics (spectral radius, fixed-point residual)."""

import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from rpanoptic.recurrence import HGRUCell, Recurrence, sweep


def random_curve(size, length, rng, turn=0.25):
    """Pixels (rows, cols) of a smooth random walk of ``length`` unit steps inside the image.

    The heading turns by a Gaussian angle each step. The walk is reflected at the border (it
    bounces; the unconstrained walk is folded back into the image), so curves are never clipped
    into straight lines along the edges. Consecutive pixels are 8-neighbours, so a curve is one
    8-connected component.
    """
    lo, hi = 1.0, size - 2.0
    angles = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, turn, length))
    steps = np.stack([np.cos(angles), np.sin(angles)], 1)
    free = rng.uniform(lo, hi, 2) + np.concatenate([np.zeros((1, 2)), np.cumsum(steps, 0)])
    period = 2 * (hi - lo)
    folded = np.abs((free - lo) % period - period / 2)  # triangle wave: reflection at lo and hi
    pixels = np.round(hi - folded).astype(int)
    return pixels[:, 0], pixels[:, 1]


def draw_curves(size, count, rng, tries=50):
    """Label image (size, size): ``count`` curves labelled 1..count, no two of them touching
    (8-neighbourhood); None when ``tries`` curves were drawn and ``count`` did not fit.

    A curve that would touch an earlier one is thrown away and drawn again.
    """
    labels = np.zeros((size, size), np.int64)
    forbidden = np.zeros((size + 2, size + 2), bool)  # padded by one pixel
    drawn = 0
    for _ in range(tries):
        rows, cols = random_curve(size, int(rng.integers(size, 2 * size)), rng)
        if forbidden[rows + 1, cols + 1].any():
            continue
        drawn += 1
        labels[rows, cols] = drawn
        for dr in range(3):
            for dc in range(3):
                forbidden[rows + dr, cols + dc] = True
        if drawn == count:
            return labels
    return None


def make_curves(n, size, rng, curves=(2, 3), attempts=1000):
    """n samples of the task, each with curves[0] .. curves[1] curves.

    Returns inputs (n, 2, size, size) = [curve pixels, mark], targets (n, size, size) = pixels of
    the marked curve, masks (n, size, size) = all curve pixels (where the loss and score count).
    An image whose curves do not fit is started again (``attempts`` times, then ValueError).
    """
    inputs = np.zeros((n, 2, size, size), np.float32)
    targets = np.zeros((n, size, size), np.float32)
    for i in range(n):
        count = rng.integers(curves[0], curves[1] + 1)
        for _ in range(attempts):
            labels = draw_curves(size, count, rng)
            if labels is not None:
                break
        else:
            raise ValueError(f"make_curves: cannot fit {count} separate curves in {size} px")
        ys, xs = np.nonzero(labels)
        k = rng.integers(len(ys))
        inputs[i, 0] = labels > 0
        inputs[i, 1, ys[k], xs[k]] = 1.0
        targets[i] = labels == labels[ys[k], xs[k]]
    return tuple(torch.from_numpy(a) for a in (inputs, targets, inputs[:, 0].copy()))


# ----------------------------------------------------------------------------------------------
# Model, loss, score


class Tracer(nn.Module):
    """stem (3x3 conv) -> hGRU recurrence -> 1x1 read-out to one logit per pixel."""

    def __init__(self, channels, kernel_size, recurrence_kw):
        super().__init__()
        self.stem = nn.Conv2d(2, channels, 3, padding=1)
        cell = HGRUCell(
            channels,
            kernel_size=kernel_size,
            norm="GN",
            gn_groups=4,
            timesteps=recurrence_kw["timesteps"],
        )
        self.recurrence = Recurrence(cell, **recurrence_kw)
        self.readout = nn.Conv2d(channels, 1, 1)

    def forward(self, x):
        """x (B, 2, H, W) -> logits (B, H, W)."""
        return self.readout(self.recurrence(self.stem(x))).squeeze(1)


def masked_bce(logits, target, mask):
    """Binary cross-entropy averaged over curve pixels only."""
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp_min(1)


def masked_iou(pred, target, mask):
    """Per-image IoU of the boolean prediction and target, both restricted to the mask (B,)."""
    pred, target = pred & mask, target & mask
    inter = (pred & target).flatten(1).sum(1).float()
    union = (pred | target).flatten(1).sum(1).float()
    return inter / union.clamp_min(1)


def baseline_iou(data):
    """IoU of the trivial answer "every curve pixel belongs to the marked curve"."""
    _, y, m = data
    return masked_iou(m > 0, y > 0, m > 0).mean().item()


# ----------------------------------------------------------------------------------------------
# Training and evaluation


def build(mode, args):
    """A fresh model for ``mode``; the same seed gives every mode the same initial weights."""
    torch.manual_seed(args.seed)
    kw = dict(
        timesteps=args.timesteps,
        grad=mode,
        neumann_steps=args.neumann_steps,
        lcp_tau=args.lcp_tau,
        lcp_reduction="mean",  # as the authors' Pathfinder code; the weight is per element
    )
    return Tracer(args.channels, args.kernel_size, kw)


def train(mode, data, args):
    """Train one model; returns it, its history [(iter, loss, lcp, train IoU)] and seconds."""
    model = build(mode, args)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    decay = args.lr_schedule == "cosine"
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.iters) if decay else None
    x, y, m = data
    gen = torch.Generator().manual_seed(args.seed + 1)  # same batches for every mode
    history = []
    start = time.perf_counter()
    bar = tqdm(range(args.iters), desc=f"train {mode:>5}", file=sys.stderr, mininterval=1.0)
    for it in bar:
        idx = torch.randint(len(x), (args.batch,), generator=gen)
        logits = model(x[idx])
        loss = masked_bce(logits, y[idx], m[idx])
        lcp = model.recurrence.lcp
        total = loss + args.lcp_weight * lcp if lcp is not None else loss
        opt.zero_grad()
        total.backward()
        opt.step()
        if sched is not None:
            sched.step()
        with torch.no_grad():
            score = masked_iou(logits > 0, y[idx] > 0, m[idx] > 0).mean().item()
        lcp_value = lcp.item() if lcp is not None else float("nan")
        history.append((it, loss.item(), lcp_value, score))
        if it % 10 == 0 or it == args.iters - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}", iou=f"{score:.3f}", refresh=False)
    return model, history, time.perf_counter() - start


@torch.no_grad()
def evaluate(model, data, steps, chunk=100):
    """Mean IoU on data at each t in steps. One pass to max(steps) per chunk (sweep mode)."""
    model.eval()
    x, y, m = data
    scores = {t: [] for t in steps}
    with sweep(model, steps) as set_count:
        for i in range(0, len(x), chunk):
            xb, yb, mb = x[i : i + chunk], y[i : i + chunk] > 0, m[i : i + chunk] > 0
            for t in steps:
                set_count(t)
                scores[t].append(masked_iou(model(xb) > 0, yb, mb))
    return {t: torch.cat(v).mean().item() for t, v in scores.items()}


def dynamics(model, x, t, power_iters=20):
    """Fixed-point residual ||F(h_t) - h_t|| / ||h_t|| and the spectral radius of dF/dh at h_t
    (power iteration), averaged over the images x. Below 1: locally contractive at h_t."""
    model.eval()
    rec = model.recurrence
    with rec.using(test_timesteps=t), rec.recording():
        with torch.no_grad():
            model(x)
        diag = rec.diagnostics(power_iters=power_iters)
    return diag["residual"].mean().item(), diag["spectral_radius"].mean().item()


@torch.no_grad()
def predict(model, x, t):
    """Probabilities (B, H, W) after t inference steps."""
    model.eval()
    with model.recurrence.using(test_timesteps=t):
        return torch.sigmoid(model(x))

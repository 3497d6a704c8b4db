#!/usr/bin/env python
"""A small, fast demo of the recurrence engine: C-RBP against BPTT on a long-range grouping task.

Task ("which curve is this?"): an image holds several thin random curves; one pixel on one of
them is marked. The model must output every pixel of the curve system connected to the mark,
which needs information to travel along the curves: a job for a recurrence. The model is a
3x3 conv stem, an hGRU ``Recurrence`` and a 1x1 read-out. It is trained with BPTT and with
C-RBP, then evaluated with t = 1 .. T steps (T well past the trained N), which shows whether
the learned dynamics stay stable past N.

Writes to --output-dir: ``metrics.csv`` (IoU per mode and step), ``iou_vs_steps.png``,
``unfolding.png`` (one example's prediction as the steps unfold) and ``training.png``.

Example:  python tools/demo_recurrence.py --iters 300
"""
import argparse
import csv
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from tqdm import tqdm

from rpanoptic.recurrence import HGRUCell, Recurrence


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--timesteps", type=int, default=8, help="N used for training")
    p.add_argument("--eval-steps", type=int, default=40, help="largest t evaluated")
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lcp-weight", type=float, default=1.0)
    p.add_argument("--modes", default="bptt,crbp")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default="output/demo_recurrence")
    return p.parse_args(argv)


def make_curves(n, size, rng):
    """n samples: inputs (n, 2, size, size) = curves + mark, targets (n, size, size)."""
    inputs = np.zeros((n, 2, size, size), np.float32)
    targets = np.zeros((n, size, size), np.float32)
    for i in range(n):
        canvas = np.zeros((size, size), bool)
        for _ in range(rng.integers(3, 6)):
            pos = rng.uniform(2, size - 2, 2)
            angle = rng.uniform(0, 2 * np.pi)
            for _ in range(rng.integers(size // 2, 2 * size)):
                angle += rng.normal(0, 0.3)
                pos = np.clip(pos + [np.cos(angle), np.sin(angle)], 0, size - 1)
                canvas[int(round(pos[0])), int(round(pos[1]))] = True
        labels, _ = ndimage.label(canvas, structure=np.ones((3, 3)))
        ys, xs = np.nonzero(canvas)
        k = rng.integers(len(ys))
        inputs[i, 0] = canvas
        inputs[i, 1, ys[k], xs[k]] = 1.0
        targets[i] = labels == labels[ys[k], xs[k]]
    return torch.from_numpy(inputs), torch.from_numpy(targets)


class Tracer(nn.Module):
    """stem (3x3 conv) -> hGRU recurrence -> 1x1 read-out to one logit per pixel."""

    def __init__(self, channels, recurrence_kw):
        super().__init__()
        self.stem = nn.Conv2d(2, channels, 3, padding=1)
        cell = HGRUCell(channels, kernel_size=5, norm="GN", gn_groups=4)
        cell.reset_parameters(recurrence_kw["timesteps"])
        self.recurrence = Recurrence(cell, **recurrence_kw)
        self.readout = nn.Conv2d(channels, 1, 1)

    def forward(self, x):
        return self.readout(self.recurrence(self.stem(x))).squeeze(1)


def iou(logits, target):
    pred = logits > 0
    inter = (pred & (target > 0)).flatten(1).sum(1).float()
    union = (pred | (target > 0)).flatten(1).sum(1).float()
    return (inter / union.clamp_min(1)).mean().item()


def train(mode, data, args):
    torch.manual_seed(args.seed)
    kw = dict(timesteps=args.timesteps, grad=mode)
    model = Tracer(args.channels, kw)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = data
    history = []
    start = time.perf_counter()
    for it in tqdm(range(args.iters), desc=f"train {mode}", file=sys.stderr):
        idx = torch.randint(len(x), (args.batch,))
        logits = model(x[idx])
        pos_weight = torch.tensor(4.0)  # curve pixels are a small fraction of the image
        loss = F.binary_cross_entropy_with_logits(logits, y[idx], pos_weight=pos_weight)
        lcp = model.recurrence.lcp
        total = loss + (args.lcp_weight * lcp if lcp is not None else 0)
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append((it, loss.item(), lcp.item() if lcp is not None else float("nan")))
    return model, history, time.perf_counter() - start


@torch.no_grad()
def evaluate(model, data, steps):
    """IoU on data at each t in steps (one model, test_timesteps = t)."""
    model.eval()
    x, y = data
    out = {}
    for t in steps:
        model.recurrence.test_timesteps = t
        out[t] = iou(model(x), y)
    return out


def save_plots(results, histories, models, data, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, curve in results.items():
        ax.plot(list(curve), list(curve.values()), marker=".", label=mode)
    ax.axvline(args.timesteps, color="gray", ls="--", label=f"trained N={args.timesteps}")
    ax.set(xlabel="inference steps t", ylabel="val IoU", title="Tracing curves: IoU vs steps")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.output_dir, "iou_vs_steps.png"), dpi=100)

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, hist in histories.items():
        it, loss, lcp = zip(*hist)
        ax.plot(it, loss, label=f"{mode} loss")
        if not all(np.isnan(lcp)):
            ax.plot(it, lcp, label=f"{mode} LCP", alpha=0.6)
    ax.set(xlabel="iteration", yscale="log", title="training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.output_dir, "training.png"), dpi=100)

    steps = [1, 2, 4, args.timesteps, 2 * args.timesteps, args.eval_steps]
    x, y = data
    fig, axes = plt.subplots(
        len(models), len(steps) + 1, figsize=(2 * len(steps) + 2, 2.2 * len(models)), squeeze=False
    )
    for row, (mode, m) in enumerate(models.items()):
        axes[row][0].imshow(x[0, 0] + 2 * y[0] + 3 * x[0, 1], cmap="magma")
        axes[row][0].set_title("input / target")
        axes[row][0].set_ylabel(mode)
        for col, t in enumerate(steps, start=1):
            m.recurrence.test_timesteps = t
            with torch.no_grad():
                axes[row][col].imshow(torch.sigmoid(m(x[:1]))[0], vmin=0, vmax=1, cmap="gray")
            axes[row][col].set_title(f"t={t}")
    for ax in np.ravel(axes):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(os.path.join(args.output_dir, "unfolding.png"), dpi=100)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(args.seed)
    train_data = make_curves(2000, args.size, rng)
    val_data = make_curves(300, args.size, rng)
    steps = sorted({1, 2, 4, 6} | set(range(args.timesteps, args.eval_steps + 1, 4)))
    results, histories, models, rows = {}, {}, {}, []
    for mode in args.modes.split(","):
        model, hist, seconds = train(mode, train_data, args)
        results[mode] = evaluate(model, val_data, steps)
        histories[mode], models[mode] = hist, model
        for t, value in results[mode].items():
            rows.append(dict(mode=mode, steps=t, val_iou=round(value, 4), train_s=round(seconds)))
        print(
            f"{mode}: trained {args.iters} iterations in {seconds:.0f}s; val IoU at "
            + ", ".join(f"t={t}: {results[mode][t]:.3f}" for t in (args.timesteps, steps[-1]))
        )
    with open(os.path.join(args.output_dir, "metrics.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    save_plots(results, histories, models, val_data, args)
    print(
        f"results in {args.output_dir}/: metrics.csv, iou_vs_steps.png, unfolding.png, training.png"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

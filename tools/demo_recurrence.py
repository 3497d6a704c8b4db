#!/usr/bin/env python
"""A small CPU demo of the recurrence engine: C-RBP against BPTT on a long-range grouping task.

Task ("which curve is this?"). An image holds a few thin random curves that never touch each
other (at least one empty pixel between two curves) and stay inside the image (they bounce off
the border). One pixel of one curve is marked. The model must say, for every curve pixel,
whether it belongs to the marked curve. Background pixels are trivially "no" and are left out of
the loss and of the score: only curve pixels count. Whether a pixel is connected to the mark
cannot be seen locally, the evidence has to travel along the curve, so the task needs a
recurrence (flood filling). The trivial answer "every curve pixel is connected" is reported as a
baseline.

Model: a 3x3 conv stem, an hGRU ``Recurrence`` and a 1x1 read-out (one logit per pixel). It is
trained once with BPTT and once with C-RBP (RBP + Lipschitz coefficient penalty), with the same
N, data, initialisation and optimiser, then evaluated with t = 1 .. T inference steps, T well
past N, which shows whether the learned dynamics stay useful when run longer than trained.

Score: IoU between predicted and true "connected" pixels, both restricted to curve pixels,
averaged over validation images.

Defaults (about 3.5 minutes on 2 CPU cores for both modes): 32 px images with 2-3 curves of
32-64 steps, N = 8 training steps, evaluation up to t = 40; 16 hGRU channels, 5x5 kernels (about
two pixels per convolution, two convolutions per step); Adam at 1e-2 with cosine decay over 400
iterations of batch 32. C-RBP uses K = 15 Neumann terms and the LCP with tau = 0.9 and weight
100: the engine's LCP is a mean over state elements, and with weight 1 it stayed around 1e-4 and
did not keep the cell contractive here (spectral radius of dF/dh above 1 at the state reached,
and a training collapse near the end at a constant learning rate); with 100 the spectral radius
stays below 1. The summary reports that radius and the fixed-point residual at N and at the
last t, for both modes.

Writes to --output-dir: ``metrics.csv`` (IoU per mode and step), ``iou_vs_steps.png``,
``unfolding.png`` (examples: input, target and predictions as the steps unfold) and
``training.png`` (loss, LCP, training IoU).

Example:  python tools/demo_recurrence.py
"""
import argparse
import csv
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from rpanoptic.recurrence import HGRUCell, Recurrence

DEFAULTS = dict(
    iters=400,
    timesteps=8,
    eval_steps=40,
    size=32,
    curves="2,3",
    channels=16,
    kernel_size=5,
    batch=32,
    lr=1e-2,
    lr_schedule="cosine",
    lcp_weight=100.0,
    lcp_tau=0.9,
    neumann_steps=15,
    train_samples=3000,
    val_samples=300,
)


def parse_args(argv=None):
    """Command-line flags (defaults in ``DEFAULTS``)."""
    d = DEFAULTS
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--iters", type=int, default=d["iters"], help="training iterations per mode")
    p.add_argument("--timesteps", type=int, default=d["timesteps"], help="N used for training")
    p.add_argument("--eval-steps", type=int, default=d["eval_steps"], help="largest t evaluated")
    p.add_argument("--size", type=int, default=d["size"], help="image side in pixels")
    p.add_argument("--curves", default=d["curves"], help="min,max number of curves per image")
    p.add_argument("--channels", type=int, default=d["channels"], help="hGRU channels")
    p.add_argument("--kernel-size", type=int, default=d["kernel_size"], help="hGRU kernel size")
    p.add_argument("--batch", type=int, default=d["batch"])
    p.add_argument("--lr", type=float, default=d["lr"], help="Adam learning rate")
    p.add_argument(
        "--lr-schedule",
        choices=("cosine", "constant"),
        default=d["lr_schedule"],
        help="cosine: decay the learning rate to 0 over --iters",
    )
    p.add_argument(
        "--lcp-weight", type=float, default=d["lcp_weight"], help="weight of the LCP (crbp/cbptt)"
    )
    p.add_argument("--lcp-tau", type=float, default=d["lcp_tau"], help="tau of the LCP")
    p.add_argument(
        "--neumann-steps", type=int, default=d["neumann_steps"], help="K of RBP's Neumann series"
    )
    p.add_argument("--train-samples", type=int, default=d["train_samples"])
    p.add_argument("--val-samples", type=int, default=d["val_samples"])
    p.add_argument("--modes", default="bptt,crbp", help="comma-separated: bptt, cbptt, rbp, crbp")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default="output/demo_recurrence")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Data


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
    rec = model.recurrence
    rec.set_sweep(steps)
    try:
        for i in range(0, len(x), chunk):
            xb, yb, mb = x[i : i + chunk], y[i : i + chunk] > 0, m[i : i + chunk] > 0
            for t in steps:
                rec.sweep_count = t
                scores[t].append(masked_iou(model(xb) > 0, yb, mb))
    finally:
        rec.set_sweep(None)
    return {t: torch.cat(v).mean().item() for t, v in scores.items()}


def dynamics(model, x, t, power_iters=20):
    """Fixed-point residual ||F(h_t) - h_t|| / ||h_t|| and the spectral radius of dF/dh at h_t
    (power iteration), averaged over the images x. Below 1: locally contractive at h_t."""
    model.eval()
    rec = model.recurrence
    rec.test_timesteps, rec.keep_state = t, True
    try:
        with torch.no_grad():
            model(x)
        diag = rec.diagnostics(power_iters=power_iters)
    finally:
        rec.keep_state, rec.last_input, rec.last_state = False, None, None
    return diag["residual"].mean().item(), diag["spectral_radius"].mean().item()


@torch.no_grad()
def predict(model, x, t):
    """Probabilities (B, H, W) after t inference steps."""
    model.eval()
    model.recurrence.test_timesteps = t
    return torch.sigmoid(model(x))


# ----------------------------------------------------------------------------------------------
# Pictures

GRAY, MARK, BACKGROUND = (0.45, 0.45, 0.45), (0.1, 1.0, 0.3), (0.0, 0.0, 0.0)
TARGET, OTHER = (1.0, 0.55, 0.0), (0.25, 0.45, 1.0)


def render(mask, values=None):
    """RGB image: background black; curve pixels gray, or coloured by values in [0, 1]
    (blue = not connected, orange = connected)."""
    img = np.zeros(mask.shape + (3,))
    img[:] = BACKGROUND
    on = mask > 0
    if values is None:
        img[on] = GRAY
    else:
        v = np.clip(values, 0, 1)[..., None]
        mixed = (1 - v) * np.array(OTHER) + v * np.array(TARGET)
        img[on] = mixed[on]
    return img


def show_mark(ax, mark):
    """Circle the marked pixel."""
    r, c = np.unravel_index(int(np.argmax(mark)), mark.shape)
    ax.plot(c, r, "o", ms=9, mfc="none", mec=MARK, mew=1.8)
    ax.plot(c, r, "s", ms=3, color=MARK)


def save_plots(results, baseline, histories, models, data, args):
    """Write iou_vs_steps.png, training.png and unfolding.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = args.output_dir
    colours = {"bptt": "tab:red", "cbptt": "tab:purple", "rbp": "tab:green", "crbp": "tab:blue"}
    names = {"bptt": "BPTT", "cbptt": "C-BPTT", "rbp": "RBP", "crbp": "C-RBP"}

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for mode, curve in results.items():
        ax.plot(
            list(curve),
            list(curve.values()),
            marker=".",
            color=colours.get(mode),
            label=names.get(mode, mode),
        )
    ax.axvline(args.timesteps, color="gray", ls="--", label=f"trained N = {args.timesteps}")
    ax.axhline(baseline, color="black", ls=":", label=f"trivial: all curve pixels ({baseline:.2f})")
    ax.set(
        xlabel="inference steps t",
        ylabel="val IoU (curve pixels)",
        title="Which curve is marked? IoU against inference steps",
        ylim=(0, 1),
        xlim=(0, max(max(c) for c in results.values()) + 1),
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "iou_vs_steps.png"), dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    window = max(1, args.iters // 30)
    for mode, hist in histories.items():
        it, loss, lcp, score = (np.array(v) for v in zip(*hist))
        smooth = np.ones(window) / window
        valid = np.arange(window - 1, len(it))
        c, n = colours.get(mode), names.get(mode, mode)
        axes[0].plot(it[valid], np.convolve(loss, smooth, "valid"), color=c, label=f"{n} loss")
        if not np.all(np.isnan(lcp)):
            axes[0].plot(it, lcp, color=c, alpha=0.4, ls="--", label=f"{n} LCP")
        axes[1].plot(it[valid], np.convolve(score, smooth, "valid"), color=c, label=n)
    axes[0].set(xlabel="iteration", yscale="log", title="training loss (curve pixels) and LCP")
    axes[1].axhline(baseline, color="black", ls=":", label="trivial")
    axes[1].set(xlabel="iteration", ylabel="IoU", title="training IoU at t = N", ylim=(0, 1))
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "training.png"), dpi=100)
    plt.close(fig)

    x, y, m = data
    examples = list(range(min(3, len(x))))
    steps = sorted({1, 2, 4, args.timesteps, 2 * args.timesteps, args.eval_steps})
    steps = [t for t in steps if t <= args.eval_steps]
    preds = {
        mode: {t: predict(model, x[examples], t) for t in steps} for mode, model in models.items()
    }
    rows = [(e, mode) for e in examples for mode in models]
    ncols = len(steps) + 2
    fig, axes = plt.subplots(
        len(rows), ncols, figsize=(1.7 * ncols, 1.8 * len(rows) + 0.6), squeeze=False
    )
    for r, (e, mode) in enumerate(rows):
        xe, ye, me = x[e].numpy(), y[e].numpy(), m[e].numpy()
        first = mode == next(iter(models))
        if first:
            axes[r][0].imshow(render(me), interpolation="nearest")
            show_mark(axes[r][0], xe[1])
            axes[r][1].imshow(render(me, ye), interpolation="nearest")
            show_mark(axes[r][1], xe[1])
        else:
            axes[r][0].axis("off")
            axes[r][1].axis("off")
        axes[r][2].set_ylabel(names.get(mode, mode), fontsize=11)
        for c, t in enumerate(steps, start=2):
            p = preds[mode][t][examples.index(e)].numpy()
            score = masked_iou(
                torch.from_numpy(p > 0.5)[None],
                torch.from_numpy(ye > 0)[None],
                torch.from_numpy(me > 0)[None],
            ).item()
            axes[r][c].imshow(render(me, p), interpolation="nearest")
            show_mark(axes[r][c], xe[1])
            axes[r][c].set_xlabel(f"IoU {score:.2f}", fontsize=8, labelpad=2)
            if r == 0:
                axes[r][c].set_title(f"t = {t}" + (" (N)" if t == args.timesteps else ""))
    axes[0][0].set_title("input + mark")
    axes[0][1].set_title("target")
    for ax in np.ravel(axes):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "gray: curves, green circle: mark; prediction on curve pixels: "
        "orange = marked curve, blue = other curve",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(os.path.join(out, "unfolding.png"), dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------


def summary(results, baseline, seconds, dyn, args):
    """The final table: IoU per mode at a few t, the baseline, the peak, the dynamics at N and
    at the last t (``dyn[mode][t] = (residual, spectral radius)``) and the training time."""
    modes = list(results)
    steps = [t for t in (1, 2, 4, args.timesteps, 2 * args.timesteps, 20, 30, args.eval_steps)]
    steps = sorted({t for t in steps if t in results[modes[0]]})
    lines = [
        f"val IoU on curve pixels ({args.val_samples} images; trained N = {args.timesteps}; "
        f"trivial 'all curve pixels' = {baseline:.3f})",
        f"{'t':>6} " + " ".join(f"{m:>8}" for m in modes) + f" {'trivial':>8}",
    ]
    for t in steps:
        mark = "*" if t == args.timesteps else " "
        values = " ".join(f"{results[m][t]:8.3f}" for m in modes)
        lines.append(f"{t:>5}{mark} {values} {baseline:8.3f}")
    peaks = {m: max(results[m], key=results[m].get) for m in modes}
    lines.append(f"{'peak':>6} " + " ".join(f"{results[m][peaks[m]]:8.3f}" for m in modes))
    lines.append(f"{'at t':>6} " + " ".join(f"{peaks[m]:8d}" for m in modes))
    for t in sorted({args.timesteps, args.eval_steps}):
        lines.append(f"{'res@' + str(t):>6} " + " ".join(f"{dyn[m][t][0]:8.4f}" for m in modes))
        lines.append(f"{'rho@' + str(t):>6} " + " ".join(f"{dyn[m][t][1]:8.3f}" for m in modes))
    lines.append(f"{'train':>6} " + " ".join(f"{seconds[m]:7.1f}s" for m in modes))
    lines.append(
        "res@t: fixed-point residual ||F(h_t) - h_t|| / ||h_t||; rho@t: spectral radius of "
        "dF/dh at h_t (< 1: contractive); on the first 100 val images"
    )
    return "\n".join(lines)


def main(argv=None):
    """Run the demo; returns 0."""
    args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    curves = tuple(int(v) for v in args.curves.split(","))
    curves = curves * 2 if len(curves) == 1 else curves
    rng = np.random.default_rng(args.seed)
    train_data = make_curves(args.train_samples, args.size, rng, curves)
    val_data = make_curves(args.val_samples, args.size, rng, curves)
    baseline = baseline_iou(val_data)
    steps = sorted(
        {t for t in (1, 2, 3, 4, 6) if t <= args.eval_steps}
        | set(range(args.timesteps, args.eval_steps + 1, 2))
        | {args.eval_steps}
    )
    results, histories, models, seconds, dyn, rows = {}, {}, {}, {}, {}, []
    for mode in args.modes.split(","):
        model, hist, secs = train(mode, train_data, args)
        results[mode] = evaluate(model, val_data, steps)
        histories[mode], models[mode], seconds[mode] = hist, model, secs
        probe = val_data[0][:100]
        dyn[mode] = {t: dynamics(model, probe, t) for t in {args.timesteps, args.eval_steps}}
        for t, value in results[mode].items():
            rows.append(dict(mode=mode, steps=t, val_iou=round(value, 4), train_s=round(secs, 1)))
    for t in steps:
        rows.append(dict(mode="trivial", steps=t, val_iou=round(baseline, 4), train_s=0))
    with open(os.path.join(args.output_dir, "metrics.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    save_plots(results, baseline, histories, models, val_data, args)
    print(summary(results, baseline, seconds, dyn, args))
    print(
        f"results in {args.output_dir}/: metrics.csv, iou_vs_steps.png, unfolding.png, training.png"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

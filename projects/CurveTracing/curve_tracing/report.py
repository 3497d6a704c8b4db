"""Pictures and the text summary of the curve-tracing toy demo
(:mod:`curve_tracing.task`)."""

import os

import numpy as np
import torch

from rpanoptic.utils import pyplot

from .task import masked_iou, predict

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
    plt = pyplot()

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

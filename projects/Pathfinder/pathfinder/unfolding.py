"""The unfolding picture: one val example through trained hGRU models, step by step.

:func:`unfolding_frames` records a model's output after each step count (small enough to keep in
a result file, so the picture can be drawn again without the checkpoint); :func:`draw_unfolding`
draws such records, one row per model.
"""

from typing import Dict, Tuple

import numpy as np
import torch

from rpanoptic.utils import pyplot

from .data import PathfinderSplit, load_split
from .fixed_point import load_trained
from .train import PathfinderRun

__all__ = ["UNFOLDING_COUNTS", "unfolding_frames", "draw_unfolding", "plot_unfolding"]

UNFOLDING_COUNTS = (1, 2, 4, 8, 16, 40)
"""The step counts of the unfolding pictures (and of the frames a result file records)."""
UNFOLDING_EXAMPLE = 1  # the val example drawn (a positive one in the generated sets)


@torch.no_grad()
def unfolding_frames(model, data: PathfinderSplit, counts=UNFOLDING_COUNTS) -> Dict:
    """The model's output on val example ``UNFOLDING_EXAMPLE`` of ``data`` after each step count
    in ``counts``: for the trace task the pixel probabilities, for the label task the state's
    mean over channels. Returns {"example", "task", "counts", "frames": [H x W lists, 3
    decimals]}."""
    model.eval()
    example = data.take(slice(UNFOLDING_EXAMPLE, UNFOLDING_EXAMPLE + 1))
    frames = []
    for t in counts:
        with model.recurrence.using(test_timesteps=t):
            out = model(example.x)
        picture = torch.sigmoid(out[0, 0]) if out.dim() == 4 else model.state[0].mean(0)
        frames.append(picture.cpu().double().round(decimals=3).tolist())
    task = "trace" if data.x.shape[1] > 1 else "label"
    return {"example": UNFOLDING_EXAMPLE, "task": task, "counts": list(counts), "frames": frames}


def draw_unfolding(rows: Dict[str, Dict], root: str, path: str) -> str:
    """Draw :func:`unfolding_frames` records, one row per entry of ``rows`` (label -> record,
    all of one example of ``root``'s val split): the image (and the cue), then the frames."""
    shows = {(r["example"], r["task"]) for r in rows.values()}
    if len(shows) != 1:
        raise ValueError(f"unfolding: the rows show different (example, task)s {sorted(shows)}")
    k, task = shows.pop()
    data = load_split(root, "val", task).take(slice(k, k + 1))
    plt = pyplot()
    cols = 1 + max(len(r["counts"]) for r in rows.values())
    fig, axes = plt.subplots(len(rows), cols, figsize=(2 * cols, 2.3 * len(rows)), squeeze=False)
    shown = data.x[0, 0] + (data.x[0, 1] * 0.5 if task == "trace" else 0)  # cue at half
    for row, (name, record) in zip(axes, rows.items()):
        row[0].imshow(shown, cmap="gray")
        row[0].set_title(f"{name} (label {int(data.y[0])})", fontsize=8)
        for ax, t, frame in zip(row[1:], record["counts"], record["frames"]):
            scale = dict(vmin=0, vmax=1) if task == "trace" else {}  # probabilities
            ax.imshow(np.asarray(frame), cmap="magma", **scale)
            ax.set_title(f"t = {t}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_unfolding(
    models: Dict[str, Tuple[PathfinderRun, str]],
    root: str,
    path: str,
    counts=UNFOLDING_COUNTS,
) -> str:
    """:func:`draw_unfolding` of trained hGRU models, one row per entry of ``models`` (label ->
    (run, checkpoint of a finished run)), after each step count in ``counts``."""
    rows, val = {}, {}
    for name, (run, checkpoint) in models.items():
        model = load_trained(run, checkpoint, finished=True)
        if run.task not in val:
            val[run.task] = load_split(root, "val", run.task)
        rows[name] = unfolding_frames(model, val[run.task], counts)
    return draw_unfolding(rows, root, path)

"""Train and evaluate Pathfinder models: loading a generated set, a training loop with the four
learning modes of the recurrence (plus feed-forward baselines), checkpoints that resume, and
the paper's stability test (accuracy at N and far past it, the drift ||h_T - h_N|| / ||h_N||,
the spectral radius at h_N), memory kept for backward and step time."""

import contextlib
import csv
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..recurrence import sweep
from ..recurrence.memory import SavedTensorMeter
from ..utils import atomic_write, atomic_write_json
from .models import FeedForwardPathfinder, HGRUPathfinder, count_parameters

__all__ = [
    "PathfinderRun",
    "build_model",
    "evaluate",
    "load_split",
    "measure_step",
    "run_and_report",
    "train",
]


@dataclass
class PathfinderRun:
    """One training run's settings (what ``tools/train_pathfinder.py`` takes as flags)."""

    model: str = "hgru"  # "hgru" or "ff"
    grad: str = "crbp"  # hgru: bptt, cbptt, rbp, crbp
    timesteps: int = 8
    neumann_steps: int = 15
    lcp_weight: float = 10.0  # on the mean-reduced penalty
    lcp_tau: float = 0.9
    channels: int = 16
    kernel_size: int = 7  # hgru horizontal kernels; ff convolutions use 3
    blocks: int = 4  # ff residual blocks
    iters: int = 1500
    batch: int = 32
    lr: float = 3e-3
    seed: int = 0
    eval_steps: List[int] = field(default_factory=lambda: [])  # default: 1, N, 2N, 3N, 40
    checkpoint_period: int = 250

    def counts(self) -> List[int]:
        n = self.timesteps
        return sorted(set(self.eval_steps) or {1, n // 2 or 1, n, 2 * n, 3 * n, 40})


def load_split(root: str, split: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, H, W) in [0, 1] and labels (N,) of ``root/split`` (labels.csv + PNGs)."""
    folder = os.path.join(root, split)
    table = os.path.join(folder, "labels.csv")
    if not os.path.isfile(table):
        raise FileNotFoundError(
            f"pathfinder split {folder} has no labels.csv: make it with "
            "python datasets/prepare_pathfinder.py (see its --help)"
        )
    with open(table) as f:
        rows = list(csv.DictReader(f))
    images = []
    for row in rows:
        path = os.path.join(folder, row["file"])
        try:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)
        except (OSError, ValueError) as e:
            raise ValueError(f"pathfinder image {path} cannot be read ({e}): make the set again")
    x = torch.from_numpy(np.stack(images))[:, None]
    y = torch.tensor([float(r["label"]) for r in rows])
    return x, y


def build_model(run: PathfinderRun) -> torch.nn.Module:
    torch.manual_seed(run.seed)
    if run.model == "hgru":
        return HGRUPathfinder(
            run.channels, run.kernel_size, run.timesteps, run.grad, run.neumann_steps, run.lcp_tau
        )
    if run.model == "ff":
        return FeedForwardPathfinder(run.channels, 3, run.blocks)
    raise ValueError(f"pathfinder: model={run.model!r} is invalid; allowed: 'hgru' | 'ff'")


def _loss(model, x, y, run: PathfinderRun) -> Tuple[torch.Tensor, float]:
    loss = F.binary_cross_entropy_with_logits(model(x), y)
    lcp = getattr(getattr(model, "recurrence", None), "lcp", None)
    if lcp is not None:
        return loss + run.lcp_weight * lcp, float(lcp.detach())
    return loss, 0.0


def train(
    model: torch.nn.Module,
    data: Tuple[torch.Tensor, torch.Tensor],
    run: PathfinderRun,
    output_dir: str,
    log: Callable[[str], None] = print,
) -> List[Dict]:
    """Train ``model`` on ``data`` (Adam, cosine decay); every ``checkpoint_period`` iterations
    write ``output_dir/checkpoint.pth`` atomically. A checkpoint already there (from the same
    settings) is resumed. Returns the history ({iteration, loss, lcp, accuracy} every 50
    iterations). A non-finite loss raises FloatingPointError naming the iteration."""
    x, y = data
    opt = torch.optim.Adam(model.parameters(), lr=run.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, run.iters)
    gen = torch.Generator().manual_seed(run.seed + 1)
    path = os.path.join(output_dir, "checkpoint.pth")
    start, history = 0, []
    if os.path.isfile(path):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("run") != asdict(run):
            raise ValueError(
                f"{path} was written by a run with other settings; use another --output-dir"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        start, history = state["iteration"], state["history"]
        log(f"resumed {path} at iteration {start}")
    model.train()
    collect = model.recurrence.using(lcp_collected=True) if hasattr(model, "recurrence") else None
    with collect or contextlib.nullcontext():
        for it in range(start, run.iters):
            idx = torch.randint(len(x), (run.batch,), generator=gen)
            loss, lcp = _loss(model, x[idx], y[idx], run)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"pathfinder: loss is {loss.item()} at iteration {it}; lower --lr or raise "
                    "--lcp-weight"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if (it + 1) % 50 == 0 or it + 1 == run.iters:
                with torch.no_grad():
                    acc = ((model(x[idx]) > 0).float() == y[idx]).float().mean().item()
                history.append(dict(iteration=it + 1, loss=loss.item(), lcp=lcp, accuracy=acc))
                log(f"iter {it + 1}/{run.iters} loss {loss.item():.4f} lcp {lcp:.4g} acc {acc:.3f}")
            if (it + 1) % run.checkpoint_period == 0 or it + 1 == run.iters:
                state = dict(
                    run=asdict(run),
                    model=model.state_dict(),
                    optimizer=opt.state_dict(),
                    scheduler=sched.state_dict(),
                    generator=gen.get_state(),
                    iteration=it + 1,
                    history=history,
                )
                os.makedirs(output_dir, exist_ok=True)
                atomic_write(path, lambda f: torch.save(state, f))
    return history


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, data: Tuple[torch.Tensor, torch.Tensor], counts: Sequence[int]
) -> Dict:
    """Accuracy of ``model`` on ``data``; for the hGRU model at every inference step count in
    ``counts`` (one pass, :func:`~rpanoptic.recurrence.sweep`), plus the drift
    ||h_T - h_N|| / ||h_N|| (T = the largest count, N = trained steps) and the spectral radius
    of dF/dh at h_N (mean over up to 64 images)."""
    x, y = data
    model.eval()
    if not hasattr(model, "recurrence"):
        acc = ((model(x) > 0).float() == y).float().mean().item()
        return {"accuracy": {1: acc}}
    rec = model.recurrence
    correct = {t: 0.0 for t in counts}
    with sweep(model, counts) as set_count:
        for i in range(0, len(x), 256):
            for t in counts:
                set_count(t)
                correct[t] += ((model(x[i : i + 256]) > 0).float() == y[i : i + 256]).sum().item()
    probe = x[:64]
    with rec.using(test_timesteps=rec.timesteps), rec.recording() as record:
        model(probe)
        h_n = record.state
        with torch.enable_grad():
            radius = rec.diagnostics(record.input, h_n, power_iters=20)["spectral_radius"]
    with rec.using(test_timesteps=max(counts)):
        model(probe)
    h_t = model.state
    drift = (h_t - h_n).flatten(1).norm(dim=1) / h_n.flatten(1).norm(dim=1).clamp_min(1e-12)
    return {
        "accuracy": {t: c / len(x) for t, c in correct.items()},
        "drift": drift.mean().item(),
        "spectral_radius": radius.mean().item(),
    }


def measure_step(model, data, run: PathfinderRun, repeats: int = 3) -> Dict[str, float]:
    """MB of activations kept for backward by one training step's forward, and its median
    time (ms)."""
    x, y = data
    model.train()
    idx = torch.arange(min(run.batch, len(x)))
    meter = SavedTensorMeter(exclude=model.parameters())
    with meter:
        loss, _ = _loss(model, x[idx], y[idx], run)
    saved = meter.bytes() / 2**20
    loss.backward()
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        _loss(model, x[idx], y[idx], run)[0].backward()
        times.append((time.perf_counter() - start) * 1000)
    model.zero_grad(set_to_none=True)
    return {"saved_mb": saved, "step_ms": statistics.median(times)}


def run_and_report(run: PathfinderRun, root: str, output_dir: str, log=print) -> Dict:
    """Train ``run`` on ``root``'s train split, evaluate on val, measure memory and time, and
    write ``output_dir/result.json``; returns the result."""
    train_data, val_data = load_split(root, "train"), load_split(root, "val")
    model = build_model(run)
    start = time.perf_counter()
    history = train(model, train_data, run, output_dir, log)
    result = {
        "run": asdict(run),
        "data": root,
        "params": count_parameters(model),
        "train_s": time.perf_counter() - start,
        **evaluate(model, val_data, run.counts() if run.model == "hgru" else [1]),
        **measure_step(model, train_data, run),
        "history": history,
    }
    atomic_write_json(os.path.join(output_dir, "result.json"), result, indent=2)
    return result

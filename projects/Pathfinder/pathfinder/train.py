"""Train and evaluate Pathfinder models: loading a generated set, a training loop with the four
learning modes of the recurrence (plus feed-forward baselines), checkpoints that resume, and
the paper's stability test (accuracy at N and far past it, the drift ||h_T - h_N|| / ||h_N||,
the spectral radius at h_N), memory kept for backward and step time.

Two tasks on the same sets:

- ``label`` (the paper's): the image in, one logit per image out, trained on the label alone.
- ``trace``: the image and a cue (a disk on the first dot) in, one logit per pixel out, trained
  on the mask of the path through the cued dot (the path, the other bright pixels and the
  background weigh a third each: see :func:`pixel_weights`) and on the label, whose logit is
  the largest pixel logit on the second dot. The answer is the same question (is the second
  dot on the cued path?), but every pixel of the path supervises, so far fewer images teach it.
"""

import contextlib
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from rpanoptic.recurrence import sweep
from rpanoptic.recurrence.memory import SavedTensorMeter
from rpanoptic.utils import atomic_write, atomic_write_json, provenance

from .data import PathfinderSplit, load_recipe, load_split
from .models import FeedForwardPathfinder, HGRUPathfinder, count_parameters

__all__ = [
    "PathfinderRun",
    "PathfinderSplit",
    "build_model",
    "evaluate",
    "label_logits",
    "load_split",
    "measure_step",
    "pixel_weights",
    "same_settings",
    "run_and_report",
    "train",
]


@dataclass
class PathfinderRun:
    """One training run's settings (what ``projects/Pathfinder/train.py`` takes as flags)."""

    task: str = "label"  # "label" (the paper's) or "trace" (cued, dense; see the module)
    model: str = "hgru"  # "hgru" or "ff"
    grad: str = "crbp"  # hgru: bptt, cbptt, rbp, crbp
    timesteps: int = 8
    neumann_steps: int = 15
    lcp_weight: float = 10.0  # on the mean-reduced penalty
    lcp_tau: float = 0.9
    lcp_vector: str = "ones"  # "ones" (the authors' penalty) or "power" (bounds the radius)
    backward_solver: str = "neumann"  # rbp/crbp: "neumann" (the paper's) or "gmres"
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


def same_settings(saved: Optional[Dict], run: PathfinderRun) -> bool:
    """Whether settings recorded in a checkpoint are ``run``'s. A setting added after the
    checkpoint was written counts as its default, which reproduces the older behaviour."""
    return saved is not None and {**asdict(PathfinderRun()), **saved} == asdict(run)


def build_model(run: PathfinderRun) -> torch.nn.Module:
    torch.manual_seed(run.seed)
    if run.task not in ("label", "trace"):
        raise ValueError(f"pathfinder: task={run.task!r} is invalid; allowed: 'label' | 'trace'")
    io = dict(in_channels=2, readout="dense") if run.task == "trace" else {}
    if run.model == "hgru":
        return HGRUPathfinder(
            run.channels,
            run.kernel_size,
            run.timesteps,
            run.grad,
            run.neumann_steps,
            run.lcp_tau,
            lcp_vector=run.lcp_vector,
            backward_solver=run.backward_solver,
            **io,
        )
    if run.model == "ff":
        return FeedForwardPathfinder(run.channels, 3, run.blocks, **io)
    raise ValueError(f"pathfinder: model={run.model!r} is invalid; allowed: 'hgru' | 'ff'")


def label_logits(model, batch: PathfinderSplit) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(B,) logits of "connected" and, for the trace task, the (B, 1, H, W) pixel logits (the
    label's logit is then the largest pixel logit on the second dot)."""
    out = model(batch.x)
    if batch.probe is None:
        return out, None
    return out.masked_fill(~batch.probe, float("-inf")).amax(dim=(1, 2, 3)), out


def pixel_weights(batch: PathfinderSplit) -> torch.Tensor:
    """Weights of the trace task's pixel loss: the cued path, the other bright pixels (the other
    paths and the dots: the distractors) and the background weigh a third each. With weights
    by class alone (path against the rest), lighting every path costs almost nothing, as the
    other paths are a few per cent of the background; this makes following the cued one pay."""
    path = batch.target > 0.5
    other = (batch.x[:, :1] > 0.5) & ~path
    weight = torch.zeros_like(batch.target)
    for group in (path, other, ~(path | other)):
        share = group.float().mean().clamp_min(1e-4)
        weight = weight + group * (1 / (3 * share))
    return weight


def _loss(model, batch: PathfinderSplit, run: PathfinderRun) -> Tuple[torch.Tensor, float]:
    logits, dense = label_logits(model, batch)
    loss = F.binary_cross_entropy_with_logits(logits, batch.y)
    if dense is not None:
        loss = loss + F.binary_cross_entropy_with_logits(
            dense, batch.target, weight=pixel_weights(batch)
        )
    lcp = getattr(getattr(model, "recurrence", None), "lcp", None)
    if lcp is not None:
        return loss + run.lcp_weight * lcp, float(lcp.detach())
    return loss, 0.0


def _path_iou(dense: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per image, IoU of the predicted path (pixel logit > 0) with the true one."""
    pred, true = dense > 0, target > 0.5
    inter = (pred & true).flatten(1).sum(1).float()
    union = (pred | true).flatten(1).sum(1).float().clamp_min(1)
    return inter / union


def train(
    model: torch.nn.Module,
    data: PathfinderSplit,
    run: PathfinderRun,
    output_dir: str,
    log: Callable[[str], None] = print,
    data_recipe: Optional[Dict] = None,
) -> List[Dict]:
    """Train ``model`` on ``data`` (Adam, cosine decay); every ``checkpoint_period`` iterations
    write ``output_dir/checkpoint.pth`` atomically. A checkpoint already there is resumed when
    it has the same settings and ``data_recipe`` (the set's generator.json); otherwise a
    ValueError says so. Returns the history ({iteration, loss, lcp, accuracy} every 50
    iterations). A non-finite loss raises FloatingPointError naming the iteration."""
    opt = torch.optim.Adam(model.parameters(), lr=run.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, run.iters)
    gen = torch.Generator().manual_seed(run.seed + 1)
    path = os.path.join(output_dir, "checkpoint.pth")
    start, history = 0, []
    if os.path.isfile(path):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not same_settings(state.get("run"), run):
            raise ValueError(
                f"{path} was written by a run with other settings; use another --output-dir"
            )
        if state.get("data") != data_recipe:
            raise ValueError(
                f"{path} was written by a run on another data set (generator.json differs); "
                "use another --output-dir"
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
            idx = torch.randint(len(data), (run.batch,), generator=gen)
            batch = data.take(idx.to(data.y.device))
            loss, lcp = _loss(model, batch, run)
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
                    acc = ((label_logits(model, batch)[0] > 0).float() == batch.y).float()
                    acc = acc.mean().item()
                history.append(dict(iteration=it + 1, loss=loss.item(), lcp=lcp, accuracy=acc))
                log(f"iter {it + 1}/{run.iters} loss {loss.item():.4f} lcp {lcp:.4g} acc {acc:.3f}")
            if (it + 1) % run.checkpoint_period == 0 or it + 1 == run.iters:
                state = dict(
                    run=asdict(run),
                    model=model.state_dict(),
                    optimizer=opt.state_dict(),
                    scheduler=sched.state_dict(),
                    generator=gen.get_state(),
                    data=data_recipe,
                    iteration=it + 1,
                    history=history,
                )
                os.makedirs(output_dir, exist_ok=True)
                atomic_write(path, lambda f: torch.save(state, f))
    return history


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: PathfinderSplit, counts: Sequence[int]) -> Dict:
    """Accuracy of ``model`` on ``data`` (for the trace task also ``path_iou``, the mean IoU of
    the predicted path); for the hGRU model at every inference step count in ``counts`` (one
    pass, :func:`~rpanoptic.recurrence.sweep`), plus the drift ||h_T - h_N|| / ||h_N|| (T = the
    largest count, N = trained steps) and the spectral radius of dF/dh at h_N (mean over up to
    64 images)."""
    model.eval()
    rec = getattr(model, "recurrence", None)
    counts = list(counts) if rec is not None else [1]
    correct = {t: 0.0 for t in counts}
    iou = {t: 0.0 for t in counts}

    def score(t, batch):
        logits, dense = label_logits(model, batch)
        correct[t] += ((logits > 0).float() == batch.y).sum().item()
        if dense is not None:
            iou[t] += _path_iou(dense, batch.target).sum().item()

    sweeping = sweep(model, counts) if rec is not None else contextlib.nullcontext(None)
    with sweeping as set_count:
        for i in range(0, len(data), 256):
            batch = data.take(slice(i, i + 256))
            for t in counts:
                if set_count is not None:
                    set_count(t)
                score(t, batch)
    result = {"accuracy": {t: c / len(data) for t, c in correct.items()}}
    if data.target is not None:
        result["path_iou"] = {t: v / len(data) for t, v in iou.items()}
    if rec is None:
        return result
    probe = data.x[:64]
    with rec.using(test_timesteps=rec.timesteps), rec.recording() as record:
        model(probe)
        h_n = record.state
        with torch.enable_grad():
            radius = rec.diagnostics(record.input, h_n, power_iters=20)["spectral_radius"]
    with rec.using(test_timesteps=max(counts)):
        model(probe)
    h_t = model.state
    drift = (h_t - h_n).flatten(1).norm(dim=1) / h_n.flatten(1).norm(dim=1).clamp_min(1e-12)
    return {**result, "drift": drift.mean().item(), "spectral_radius": radius.mean().item()}


def measure_step(model, data: PathfinderSplit, run: PathfinderRun, repeats: int = 3) -> Dict:
    """MB of activations kept for backward by one training step's forward, and its median
    time (ms)."""
    model.train()
    batch = data.take(torch.arange(min(run.batch, len(data))))
    meter = SavedTensorMeter(exclude=model.parameters())
    with meter:
        loss, _ = _loss(model, batch, run)
    saved = meter.bytes() / 2**20
    loss.backward()
    times = []
    cuda = batch.x.is_cuda
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize(batch.x.device)
        start = time.perf_counter()
        _loss(model, batch, run)[0].backward()
        if cuda:
            torch.cuda.synchronize(batch.x.device)
        times.append((time.perf_counter() - start) * 1000)
    model.zero_grad(set_to_none=True)
    return {"saved_mb": saved, "step_ms": statistics.median(times)}


def run_and_report(
    run: PathfinderRun,
    root: str,
    output_dir: str,
    log=print,
    device: str = "cpu",
    extra: Optional[Callable[[torch.nn.Module, PathfinderSplit, PathfinderSplit], Dict]] = None,
) -> Dict:
    """Train ``run`` on ``root``'s train split on ``device`` (the sets are small enough to sit
    there whole), evaluate on val, measure memory and time, and write
    ``output_dir/result.json`` (which records the device); returns the result. The device is
    not a setting of the run: a checkpoint resumes on another device. ``extra(model, train,
    val)``, when given, returns more entries for the result, measured on the trained model
    (the comparison records the cue's reach, fixed-point diagnostics and unfolding there)."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"pathfinder: device {device} asked for, but torch sees no CUDA device")
    train_data = load_split(root, "train", run.task).to(device)
    val_data = load_split(root, "val", run.task).to(device)
    model = build_model(run).to(device)
    start = time.perf_counter()
    history = train(model, train_data, run, output_dir, log, data_recipe=load_recipe(root))
    result = {
        "run": asdict(run),
        "data": root,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "params": count_parameters(model),
        "train_s": time.perf_counter() - start,
        **evaluate(model, val_data, run.counts()),
        **measure_step(model, train_data, run),
        **(extra(model, train_data, val_data) if extra is not None else {}),
        "history": history,
        "provenance": provenance(str(device)),
    }
    atomic_write_json(os.path.join(output_dir, "result.json"), result, indent=2)
    return result

#!/usr/bin/env python
"""Benchmark a whole model against the feed-forward Panoptic FPN baseline.

For the config and for the baseline it measures: parameters, training-step time (median over
--iters after --warmup), peak training memory (GPU: torch.cuda.max_memory_allocated; CPU: the
growth of the process's peak RSS during a step, each configuration in a fresh process) and
inference images/s (batch 1). Inputs are synthetic (random images with a few boxes, masks and a
semantic map) and weights random: nothing is downloaded (ResNet and FPN use GroupNorm, as a
random ResNet with FrozenBN overflows; pass MODEL.RESNETS.NORM to change it).

  python tools/benchmark.py --config-file configs/COCO-PanopticSegmentation/<name>.yaml
  python tools/benchmark.py --config-file ... --steps 1,3,5,10,20,40 --grad bptt,crbp [KEY VALUE]

The second form sweeps MODEL.RECURRENT.TIMESTEPS x GRAD (the paper's memory-vs-steps
comparison). Prints a table and the goal ratios; writes results.csv, targets.csv and
memory_vs_steps.png to --output-dir.
"""
import argparse
import os
import statistics
import sys
import time

from _bench_common import peak_rss_mb, run_configurations, save_tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = "configs/COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--baseline-config", default=os.path.join(ROOT, BASELINE))
    p.add_argument("--steps", default="", help="values of MODEL.RECURRENT.TIMESTEPS to sweep")
    p.add_argument("--grad", default="", help="values of MODEL.RECURRENT.GRAD to sweep")
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="")
    p.add_argument("--output-dir", default="output/benchmark")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def synthetic_batch(n, size, num_classes, num_stuff, device, seed=0):
    """DatasetMapper-style training inputs: an image, three boxes/masks and a semantic map."""
    import torch
    from detectron2.structures import BitMasks, Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(n):
        image = torch.randint(0, 256, (3, size, size), generator=g).float()
        boxes = torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8], [0.2, 0.6, 0.7, 0.95]])
        boxes = (boxes * size).round()
        masks = torch.zeros(len(boxes), size, size, dtype=torch.bool)
        for k, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[k, y0:y1, x0:x1] = True
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.arange(len(boxes)) % num_classes
        inst.gt_masks = BitMasks(masks)
        sem = torch.randint(1, max(2, num_stuff), (size, size), generator=g)
        sem[masks.any(0)] = 0
        item = {"image": image.to(device), "instances": inst, "sem_seg": sem}
        batch.append(dict(item, height=size, width=size))
    return batch


def measure(label, config_file, opts, args):
    """Build one configuration and measure it; returns a result row (runs in its own process)."""
    import torch
    from detectron2.utils.events import EventStorage

    import rpanoptic  # noqa: F401  (registers the components)
    from rpanoptic.engine.setup import get_rpanoptic_cfg
    from rpanoptic.modeling import build_model, recurrent_layers

    torch.manual_seed(0)
    # Random weights: with the configs' FrozenBN, activations of a random ResNet overflow, so the
    # bottom-up and FPN use GroupNorm unless the overrides say otherwise.
    fixed = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", args.device]
    fixed += ["MODEL.RESNETS.NORM", "GN", "MODEL.FPN.NORM", "GN"]
    cfg = get_rpanoptic_cfg(config_file, [*fixed, *opts])
    device = torch.device(cfg.MODEL.DEVICE)
    model = build_model(cfg).to(device)
    layers = recurrent_layers(model)
    for layer in layers.values():
        layer.lcp_collected = True  # the benchmark adds the penalty itself, as LCPHook does
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    batch = synthetic_batch(
        args.batch,
        args.image_size,
        cfg.MODEL.ROI_HEADS.NUM_CLASSES,
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        device,
    )

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step():
        model.train()
        with EventStorage(0):
            losses = model(batch)
        penalties = [layer.lcp for layer in layers.values() if layer.lcp is not None]
        loss = sum(losses.values())
        if penalties:
            loss = loss + cfg.MODEL.RECURRENT.LCP_WEIGHT * torch.stack(penalties).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = peak_rss_mb()
    train_step()  # the first step is the memory measurement (CPU peak RSS cannot be reset)
    sync()
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = peak_rss_mb() - base
    times = []
    for i in range(args.warmup + args.iters):
        sync()
        start = time.perf_counter()
        train_step()
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    model.eval()
    infer = []
    with torch.no_grad():
        for i in range(args.warmup + args.iters):
            sync()
            start = time.perf_counter()
            model(batch[:1])
            sync()
            if i >= args.warmup:
                infer.append(time.perf_counter() - start)
    recurrent = bool(layers)
    return {
        "model": label,
        "grad": cfg.MODEL.RECURRENT.GRAD if recurrent else "-",
        "timesteps": cfg.MODEL.RECURRENT.TIMESTEPS if recurrent else 0,
        "device": str(device),
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "train_step_ms": round(1000 * statistics.median(times), 1),
        "train_peak_mb": round(peak, 1),
        "infer_img_s": round(1.0 / statistics.median(infer), 3),
    }


def configurations(args):
    """(label, config file, overrides) for the baseline and each recurrent setting."""
    tasks = [("baseline", args.baseline_config, list(args.opts))]
    steps = [int(s) for s in args.steps.split(",") if s] or [None]
    grads = [g for g in args.grad.split(",") if g] or [None]
    name = os.path.splitext(os.path.basename(args.config_file))[0]
    for grad in grads:
        for n in steps:
            extra = (["MODEL.RECURRENT.GRAD", grad] if grad else []) + (
                ["MODEL.RECURRENT.TIMESTEPS", str(n)] if n else []
            )
            tasks.append((name, args.config_file, list(args.opts) + extra))
    return tasks


def run(args):
    tasks = [(label, cfg, opts, args) for label, cfg, opts in configurations(args)]
    return run_configurations(measure, tasks, args.device)


def targets(rows):
    """The goal ratios of the integration issue, measured in this run."""
    base = rows[0]
    rec = rows[1:]
    out = []

    def add(name, value, limit, met):
        out.append({"target": name, "value": round(value, 3), "limit": limit, "met": met})

    crbp = {r["timesteps"]: r for r in rec if r["grad"] == "crbp"}
    bptt = {r["timesteps"]: r for r in rec if r["grad"] == "bptt"}
    if 20 in crbp:
        add(
            "crbp N=20 train memory / baseline",
            crbp[20]["train_peak_mb"] / base["train_peak_mb"],
            "<= 1.35",
            crbp[20]["train_peak_mb"] <= 1.35 * base["train_peak_mb"],
        )
        add(
            "crbp N=20 inference time / baseline",
            base["infer_img_s"] / crbp[20]["infer_img_s"],
            "<= 1.3",
            base["infer_img_s"] <= 1.3 * crbp[20]["infer_img_s"],
        )
    if len(crbp) > 1:
        mem = [r["train_peak_mb"] for r in crbp.values()]
        add(
            "crbp train memory max/min over N",
            max(mem) / min(mem),
            "flat (~1)",
            max(mem) <= 1.2 * min(mem),
        )
    if len(bptt) > 1:
        lo, hi = min(bptt), max(bptt)
        ratio = bptt[hi]["train_peak_mb"] / bptt[lo]["train_peak_mb"]
        add(f"bptt train memory N={hi} / N={lo}", ratio, "> 1 (grows)", ratio > 1)
    return out


def write(rows, goals, outdir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    save_tables(outdir, rows, goals)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in zip(
        axes, ("train_peak_mb", "train_step_ms"), ("peak memory (MB)", "step (ms)")
    ):
        for grad in dict.fromkeys(r["grad"] for r in rows[1:]):
            pts = sorted((r["timesteps"], r[key]) for r in rows[1:] if r["grad"] == grad)
            ax.plot(*zip(*pts), marker="o", label=grad)
        ax.axhline(rows[0][key], color="gray", ls="--", label="feed-forward baseline")
        ax.set(xlabel="timesteps N", ylabel=label, title=f"training, {rows[0]['device']}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "memory_vs_steps.png"), dpi=100)
    print(f"\nwrote {outdir}/results.csv, targets.csv, memory_vs_steps.png")


def main(argv=None):
    args = parse_args(argv)
    if not args.device:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = run(args)
    write(rows, targets(rows), args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

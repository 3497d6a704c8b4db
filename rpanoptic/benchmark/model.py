"""Benchmark a whole model against the feed-forward Panoptic FPN baseline.

For the config and for the baseline (same overrides minus the recurrent-only keys) it measures:
parameters, training-step time (median over --iters after --warmup), peak training memory (GPU:
torch.cuda.max_memory_allocated growth during a step; CPU: growth of the peak RSS during a step,
each configuration in a fresh process; train_peak_total_mb: the whole peak, weights and
optimizer state included, as the paper reports it) and inference images/s (eval, no_grad,
batch 1); --amp measures mixed precision (float16 autocast and a gradient scaler). A
training step is the losses + LCP_WEIGHT x the recurrent layers' penalties (cbptt/crbp),
backward and an SGD step. Inputs are synthetic (random images with three boxes/masks and a
semantic map) and weights random: nothing is downloaded. ResNet and FPN use GroupNorm unless the
overrides say otherwise, as a random ResNet with FrozenBN overflows.

  python tools/benchmark.py model --config-file configs/COCO-PanopticSegmentation/<name>.yaml
  python tools/benchmark.py model --config-file ... --steps 1,3,5,10,20,40 --grad bptt,crbp \\
      [KEY VALUE ...]

  python tools/benchmark.py model --suite synthetic      # or: --suite coco
  python tools/benchmark.py model --suite synthetic --rounds 3

The second form sweeps MODEL.RECURRENT.TIMESTEPS x GRAD (the paper's memory-vs-steps
comparison). The third measures a fixed list of models (``SUITES``: feed-forward, RFPN
BPTT-3/5, RFPN C-RBP-10/20, C-RBP-10 with compiled steps, with halting at inference (eager,
compiled, and with Anderson acceleration) and with K = 4 GMRES products in backward
(``MODEL.RECURRENT.BACKWARD_SOLVER gmres``), in the coco suite RFPN C-RBP-10 on p3-p5 only
(no p2), the recurrent mask head C-RBP-10) in one table, with each model's training-step time
and inference time as ratios to the feed-forward model's and the mean steps its recurrent
layers took at inference.
``--rounds R`` measures the whole list R times, its order rotated each round, takes each ratio
within a round (so that a machine's load reaches a model and its baseline alike) and reports
the median ratio with its range (rounds.csv keeps every round). Prints a table and the goal
ratios; writes results.csv, targets.csv and memory_vs_steps.png (a sweep) to
--output-dir.
"""

import argparse
import contextlib
import gc
import operator
import os

from .common import peak_rss_mb, run_configurations, save_tables, timed, write_csv
from .suites import SUITES, combine_rounds, suite_ratios, suite_targets  # noqa: F401

# The suites name configs of the source checkout (configs/ is not installed with the package).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASELINE = "configs/COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"
RECURRENT_KEYS = ("MODEL.RECURRENT.", "MODEL.HGRU.", "MODEL.RFPN.")  # dropped for the baseline
LIMITS = {"<=": operator.le, ">": operator.gt}


def parse_args(argv=None):
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", default="", help="the (recurrent) config to measure")
    p.add_argument(
        "--suite",
        default="",
        choices=["", *SUITES],
        help="measure a fixed list of models instead (sets --image-size and --batch)",
    )
    p.add_argument("--baseline-config", default=os.path.join(ROOT, BASELINE))
    p.add_argument("--steps", default="", help="values of MODEL.RECURRENT.TIMESTEPS to sweep")
    p.add_argument("--grad", default="", help="values of MODEL.RECURRENT.GRAD to sweep")
    p.add_argument(
        "--image-size", type=int, default=None, help="square synthetic images (default 512)"
    )
    p.add_argument("--batch", type=int, default=None, help="images per training step (default 2)")
    p.add_argument(
        "--amp",
        action="store_true",
        help="mixed precision (CUDA): float16 autocast and a gradient scaler, as "
        "SOLVER.AMP.ENABLED trains; the recurrent layers keep float32",
    )
    p.add_argument("--iters", type=int, default=3, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="--suite: measure every model this many times, the order rotated each round; "
        "ratios to ff are taken within a round, then their median and range are reported",
    )
    p.add_argument("--device", default="", help="default: cuda when available, else cpu")
    p.add_argument(
        "--memory-cap-gb",
        type=float,
        default=0,
        help="CUDA: cap this process's memory (torch.cuda.set_per_process_memory_fraction). "
        "cuDNN takes workspace-hungry algorithms when memory is free (the LCP's double backward "
        "most); under a cap it falls back to others, so the peak shows what a step needs",
    )
    p.add_argument("--output-dir", default="output/benchmark")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    if bool(args.config_file) == bool(args.suite):
        p.error("give either --config-file or --suite")
    if args.rounds < 1 or (args.rounds > 1 and not args.suite):
        p.error("--rounds must be >= 1, and above 1 only with --suite")
    size, batch = SUITES[args.suite][:2] if args.suite else (512, 2)
    args.image_size = args.image_size or size
    args.batch = args.batch or batch
    return args


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


class Bench:
    """One configuration built for measuring: the model with random weights, a synthetic batch
    and its training step and inference forward (see the module docstring)."""

    def __init__(self, config_file, opts, args):
        import torch

        from ..engine.setup import get_rpanoptic_cfg
        from ..modeling import build_model, recurrent_layers

        torch.manual_seed(0)
        fixed = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", args.device]
        fixed += ["MODEL.RESNETS.NORM", "GN", "MODEL.FPN.NORM", "GN"]
        self.cfg = cfg = get_rpanoptic_cfg(config_file, [*fixed, *opts])
        self.device = device = torch.device(cfg.MODEL.DEVICE)
        self.model = build_model(cfg).to(device)
        self.layers = list(recurrent_layers(self.model).values())
        self._collecting = contextlib.ExitStack()  # the step adds the penalty itself, as LCPHook
        for layer in self.layers:
            self._collecting.enter_context(layer.using(lcp_collected=True))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-4)
        heads = cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        self.batch = synthetic_batch(args.batch, args.image_size, *heads, device)
        self.cuda = device.type == "cuda"
        self.sync = torch.cuda.synchronize if self.cuda else (lambda: None)
        if args.amp and not self.cuda:
            raise ValueError("--amp needs a CUDA device (as Detectron2's AMPTrainer)")
        self.amp = bool(args.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    def autocast(self):
        import torch

        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp)

    def train_loss(self):
        """The training forward: the losses plus LCP_WEIGHT x the penalties (a scalar)."""
        import torch
        from detectron2.utils.events import EventStorage

        self.model.train()
        with EventStorage(0), self.autocast():
            loss = sum(self.model(self.batch).values())
        penalties = [layer.lcp for layer in self.layers if layer.constrained]
        if penalties:
            loss = loss + self.cfg.MODEL.RECURRENT.LCP_WEIGHT * torch.stack(penalties).sum()
        return loss

    def train_step(self):
        """Forward, backward and an SGD step."""
        loss = self.train_loss()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def infer(self):
        """Inference on the first image; returns the mean steps of each recurrent layer."""
        import torch

        self.model.eval()
        with torch.no_grad(), self.autocast():
            self.model(self.batch[:1])
        return [layer.steps.float().mean().item() for layer in self.layers if layer.steps.numel()]


def measure(label, config_file, opts, args, round_index=0):
    """Build one configuration and measure it; returns a result row (runs in its own process);
    ``round_index`` (--rounds) is only recorded."""
    import torch

    bench = Bench(config_file, opts, args)
    cfg, device, layers, model = bench.cfg, bench.device, bench.layers, bench.model
    cuda, sync = bench.cuda, bench.sync
    train_step, infer = bench.train_step, bench.infer

    if cuda:  # on GPU the configurations share a process: drop the last one's tensors first
        if args.memory_cap_gb:
            total_gb = torch.cuda.get_device_properties(device).total_memory / 2**30
            torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap_gb / total_gb))
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = peak_rss_mb()
    train_step()  # the memory measurement, before any other step (CPU peak RSS cannot be reset)
    sync()
    total = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb()
    peak = total - base
    step = timed(train_step, args.warmup, args.iters, sync)
    inference = timed(infer, args.warmup, args.iters, sync)
    steps = infer()
    return {
        "model": label,
        "grad": cfg.MODEL.RECURRENT.GRAD if layers else "-",
        "timesteps": cfg.MODEL.RECURRENT.TIMESTEPS if layers else 0,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "amp": bool(args.amp),
        "memory_cap_gb": args.memory_cap_gb if cuda else 0,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "train_step_ms": round(1000 * step, 1),
        "train_peak_mb": round(peak, 1),
        "train_peak_total_mb": round(total, 1),
        "infer_img_s": round(1.0 / inference, 3),
        "infer_steps": round(sum(steps) / len(steps), 2) if steps else 0,
        "round": round_index,
    }


def baseline_opts(opts):
    """``KEY VALUE`` overrides without the pairs whose key only a recurrent model reads."""
    pairs = zip(opts[0::2], opts[1::2])
    return [x for k, v in pairs if not k.startswith(RECURRENT_KEYS) for x in (k, v)]


def configurations(args):
    """(label, config file, overrides) for the baseline, then each recurrent setting."""
    if len(args.opts) % 2:
        raise ValueError(f"Overrides must be KEY VALUE pairs, got {args.opts}")
    if args.suite:
        return [
            (
                (label, os.path.join(ROOT, config), [*baseline_opts(args.opts), *extra.split()])
                if i == 0
                else (label, os.path.join(ROOT, config), [*args.opts, *extra.split()])
            )
            for i, (label, config, extra) in enumerate(SUITES[args.suite][2])
        ]
    tasks = [("baseline", args.baseline_config, baseline_opts(args.opts))]
    name = os.path.splitext(os.path.basename(args.config_file))[0]
    grads = [["MODEL.RECURRENT.GRAD", g] for g in args.grad.split(",") if g] or [[]]
    steps = [["MODEL.RECURRENT.TIMESTEPS", n] for n in args.steps.split(",") if n] or [[]]
    for grad in grads:
        for n in steps:
            tasks.append((name, args.config_file, [*args.opts, *grad, *n]))
    return tasks


def targets(rows):
    """The goal ratios of the whole model, measured in this run (those its rows allow)."""
    base = rows[0]
    by_mode = {}
    for r in rows[1:]:
        by_mode.setdefault(r["grad"], {})[r["timesteps"]] = r
    crbp, bptt = by_mode.get("crbp", {}), by_mode.get("bptt", {})
    out = []

    def add(name, value, op, limit):
        met = LIMITS[op](value, limit)
        out.append({"target": name, "value": round(value, 3), "limit": f"{op} {limit}", "met": met})

    if 20 in crbp:
        mem = crbp[20]["train_peak_mb"] / base["train_peak_mb"]
        add("crbp N=20 train memory / baseline", mem, "<=", 1.35)
    if len(crbp) > 1:
        mem = [r["train_peak_mb"] for r in crbp.values()]
        add(f"crbp train memory max/min over N={sorted(crbp)}", max(mem) / min(mem), "<=", 1.2)
    if len(bptt) > 1:
        lo, hi = (1, 5) if {1, 5} <= set(bptt) else (min(bptt), max(bptt))
        growth = bptt[hi]["train_peak_mb"] / bptt[lo]["train_peak_mb"]
        add(f"bptt train memory N={hi} / N={lo}", growth, ">", 1)
    if 20 in crbp:
        slower = base["infer_img_s"] / crbp[20]["infer_img_s"]
        add("crbp N=20 inference time / baseline", slower, "<=", 1.3)
    return out


def write(rows, goals, outdir):
    """Print the tables; write results.csv, targets.csv and memory_vs_steps.png to outdir."""
    from ..utils import pyplot

    plt = pyplot()

    save_tables(outdir, rows, goals)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in zip(
        axes,
        ("train_peak_mb", "train_step_ms"),
        ("training peak memory (MB)", "training step (ms)"),
    ):
        for grad in dict.fromkeys(r["grad"] for r in rows[1:]):
            pts = sorted((r["timesteps"], r[key]) for r in rows[1:] if r["grad"] == grad)
            ax.plot(*zip(*pts), marker="o", label=f"{rows[1]['model']} ({grad})")
        ax.axhline(rows[0][key], color="gray", ls="--", label="feed-forward baseline")
        ax.set(xlabel="timesteps N", ylabel=label, title=f"{label}, {rows[0]['device']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "memory_vs_steps.png"), dpi=100)
    print(f"\nwrote {outdir}/results.csv, targets.csv, memory_vs_steps.png")


def main(argv=None):
    """Measure every configuration (a fresh process each on CPU), then report and save."""
    args = parse_args(argv)
    if not args.device:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    configs = configurations(args)
    tasks = []
    for r in range(args.rounds):  # the order rotated by one each round, the baseline included
        shifted = configs[r % len(configs) :] + configs[: r % len(configs)]
        tasks += [(label, cfg, opts, args, r) for label, cfg, opts in shifted]
    rows = run_configurations(measure, tasks, args.device)
    if args.suite:
        order = [label for label, _, _ in configs]
        rows = suite_ratios(sorted(rows, key=lambda r: (r["round"], order.index(r["model"]))))
        if args.rounds > 1:
            write_csv(os.path.join(args.output_dir, "rounds.csv"), rows)
            rows = combine_rounds(rows)
        save_tables(args.output_dir, rows, suite_targets(rows))
        extra = ", rounds.csv" if args.rounds > 1 else ""
        print(f"\nwrote {args.output_dir}/results.csv, targets.csv{extra}")
    else:
        rows = [{k: v for k, v in r.items() if k != "round"} for r in rows]
        write(rows, targets(rows), args.output_dir)
    return 0

"""The cost table: what each recurrent configuration costs against the feed-forward Panoptic FPN.

For each configuration of ``CONFIGS`` (the feed-forward model; the RFPN with C-RBP at several
choices of levels, widths and placement; BPTT-3; the recurrent mask head) it records, each in a
fresh process on CPU:

- counted, at COCO's size (``--count-size``, default 800 px, ``--count-batch`` images): FLOPs of
  a training step (forward, the losses and penalties, backward) and of an inference forward
  (per image), operators launched (about one kernel each in eager mode), FLOPs of convolutions
  whose kernel is a feature map, and the memory the training forward keeps for backward
  (unique non-parameter storages saved by autograd);
- counted and timed at ``--image-size`` (default 256 px, batch ``--batch``): the same counts,
  and the median time of a training step and of an inference forward, as ratios to the
  feed-forward model's measured in the same round (``--rounds``, the order rotated each round);
  on a GPU also the peak memory of a training step (``--memory-cap-gb`` caps it, ``--amp``
  trains in mixed precision).

Weights are random and inputs synthetic (``benchmark/model.py``): nothing is downloaded. Prints
the table and the goals of the default COCO RFPN config, and writes results.csv, targets.csv
and cost.png to ``--output-dir``.

  python tools/benchmark.py cost                                  # CPU: counts at 800, times at 256
  python tools/benchmark.py cost --only ff,rfpn_crbp20_default --rounds 3
  python tools/benchmark.py cost --device cuda --image-size 800 --count-size 0   # GPU rows

Trailing ``KEY VALUE`` pairs override every configuration (e.g. a smaller ResNet in a test).
"""

import argparse
import copy
import gc
import os
import statistics

from .common import run_configurations, save_tables, timed, write_csv

_COCO = "configs/COCO-PanopticSegmentation/"
_FF = _COCO + "panoptic_fpn_R_50_1x.yaml"
_RFPN = _COCO + "panoptic_rfpn_R_50_crbp20_1x.yaml"
_L = "MODEL.RFPN.LEVELS"
_W = "MODEL.RFPN.WIDTHS"
_P = "MODEL.RFPN.PLACEMENT"
_ALL = ["p2", "p3", "p4", "p5"]
_OLD = [_L, _ALL, _W, [], _P, "output"]  # the RFPN as it was first measured on a GPU
# label -> (config, overrides, what it is); the first is the baseline of every ratio.
CONFIGS = {
    "ff": (_FF, [], "feed-forward Panoptic FPN"),
    "rfpn_crbp20_p2-p5_w256_output_dbwd": (
        _RFPN,
        [*_OLD, "MODEL.RECURRENT.LCP_GRADIENT", "double_backward"],
        "p2-p5 at 256 channels on the outputs, the penalty by double backward (first measured)",
    ),
    "rfpn_crbp20_p2-p5_w256_output": (_RFPN, _OLD, "as above, the penalty by a forward product"),
    "rfpn_crbp20_p3-p5_w64-128-256_topdown": (
        _RFPN,
        [_L, ["p3", "p4", "p5"], _W, [64, 128, 256], _P, "topdown"],
        "p3-p5 in the top-down path, widths growing with the stride",
    ),
    "rfpn_crbp20_p2-p5_w32-64-128-256_topdown": (
        _RFPN,
        [_L, _ALL, _W, [32, 64, 128, 256], _P, "topdown"],
        "every level in the top-down path, MDEQ-style widths",
    ),
    "rfpn_crbp20_default": (_RFPN, [], "the default COCO RFPN config as shipped"),
    "rfpn_bptt3_default": (
        _COCO + "panoptic_rfpn_R_50_bptt3_1x.yaml",
        [],
        "the BPTT-3 config as shipped",
    ),
    "rmask_crbp20": (
        _COCO + "panoptic_rmask_R_50_crbp20_1x.yaml",
        [],
        "the recurrent mask head (C-RBP-20)",
    ),
}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT = "rfpn_crbp20_default"
GOALS = (  # (column, limit): the default COCO RFPN config against the feed-forward model
    ("train_flop_ratio", 1.5),
    ("infer_flop_ratio", 1.2),
    ("train_time_ratio", 1.5),
    ("infer_time_ratio", 1.2),
)


def parse_args(argv=None):
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", default="", help=f"comma-separated labels (of: {', '.join(CONFIGS)})")
    p.add_argument("--image-size", type=int, default=256, help="timed (and counted) size")
    p.add_argument("--batch", type=int, default=2, help="images per timed training step")
    p.add_argument(
        "--count-size", type=int, default=800, help="also count at this size (0: do not)"
    )
    p.add_argument("--count-batch", type=int, default=1, help="images per counted step")
    p.add_argument("--no-time", action="store_true", help="count only")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds, order rotated")
    p.add_argument("--iters", type=int, default=3, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    p.add_argument("--device", default="", help="default: cuda when available, else cpu")
    p.add_argument("--amp", action="store_true", help="CUDA: float16 autocast training")
    p.add_argument("--memory-cap-gb", type=float, default=0, help="CUDA: cap the process memory")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--output-dir", default="output/benchmark_cost")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of every config")
    args = p.parse_args(argv)
    if len(args.opts) % 2:
        p.error(f"overrides must be KEY VALUE pairs, got {args.opts}")
    labels = [x for x in args.only.split(",") if x] or list(CONFIGS)
    unknown = [x for x in labels if x not in CONFIGS]
    if unknown:
        p.error(f"--only: unknown {unknown}; known: {', '.join(CONFIGS)}")
    if "ff" not in labels:
        labels.insert(0, "ff")  # every ratio needs the baseline
    args.labels = labels
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    return args


def _counts(bench, prefix: str) -> dict:
    """Counts of one training step and one inference forward of ``bench`` (model.Bench)."""
    from ..recurrence.memory import SavedTensorMeter
    from .counting import OperationCounter

    model = bench.model
    with SavedTensorMeter(exclude=model.parameters()) as meter, OperationCounter() as forward:
        loss = bench.train_loss()
    saved = meter.bytes()
    with OperationCounter() as backward:
        loss.backward()
    del loss
    bench.optimizer.zero_grad(set_to_none=True)
    with OperationCounter() as inference:
        bench.infer()
    images = len(bench.batch)
    return {
        f"{prefix}train_gflop": round((forward.flops + backward.flops) / images / 1e9, 2),
        f"{prefix}infer_gflop": round(inference.flops / 1e9, 2),
        f"{prefix}train_kernels": forward.kernels + backward.kernels,
        f"{prefix}infer_kernels": inference.kernels,
        f"{prefix}map_kernel_gflop": round(
            (forward.map_kernel_flops + backward.map_kernel_flops) / images / 1e9, 2
        ),
        f"{prefix}saved_mb": round(saved / images / 2**20, 1),
    }


def measure(label, args, round_index=0):
    """One configuration in its own process: counts (first round) and times. Returns a row."""
    import torch

    from .model import Bench

    if args.threads:
        torch.set_num_threads(args.threads)
    config, opts, _ = CONFIGS[label]
    config, opts = os.path.join(ROOT, config), [*opts, *args.opts]
    row = {"model": label, "round": round_index}
    if round_index == 0 and args.count_size:
        big = copy.copy(args)
        big.image_size, big.batch, big.amp = args.count_size, args.count_batch, False
        row.update(_counts(Bench(config, opts, big), f"c{args.count_size}_"))
    bench = Bench(config, opts, args)
    if round_index == 0:
        row.update(_counts(bench, f"c{args.image_size}_"))
    if not args.no_time:
        cuda = bench.cuda
        if cuda:
            if args.memory_cap_gb:
                total = torch.cuda.get_device_properties(bench.device).total_memory / 2**30
                torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap_gb / total))
            gc.collect()  # the previous configuration's tensors (GPU rows share a process)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        train = timed(bench.train_step, args.warmup, args.iters, bench.sync)
        row["train_ms"] = round(1000 * train, 1)
        if cuda:  # the peak of the training steps, before inference runs
            row["train_peak_mb"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
            row["device"] = torch.cuda.get_device_name(bench.device)
        else:
            row["device"] = "cpu"
        row["infer_ms"] = round(1000 * timed(bench.infer, args.warmup, args.iters, bench.sync), 1)
        row["amp"] = bench.amp
        row["memory_cap_gb"] = args.memory_cap_gb if cuda else 0
    params = sum(p.numel() for p in bench.model.parameters())
    row["params_M"] = round(params / 1e6, 3)
    return row


def combine(rows, args):
    """One row per configuration: counts from round 0, time ratios to the feed-forward model
    taken within each round, then their median (and range) over the rounds."""
    by_round = {}
    for r in rows:
        by_round.setdefault(r["round"], {})[r["model"]] = r
    out = []
    for label in args.labels:
        first = dict(by_round[0][label])
        first.pop("round")
        first["what"] = CONFIGS[label][2]
        for size in (args.count_size, args.image_size):
            base = by_round[0]["ff"]
            for kind in ("train", "infer"):
                key = f"c{size}_{kind}_gflop"
                if size and key in first:
                    first[f"c{size}_{kind}_flop_ratio"] = round(first[key] / base[key], 3)
        if not args.no_time:
            for kind in ("train", "infer"):
                ratios = [
                    rnd[label][f"{kind}_ms"] / rnd["ff"][f"{kind}_ms"] for rnd in by_round.values()
                ]
                first[f"{kind}_time_ratio"] = round(statistics.median(ratios), 3)
                first[f"{kind}_time_ratio_range"] = f"{min(ratios):.2f}-{max(ratios):.2f}"
                first[f"{kind}_ms"] = round(
                    statistics.median(rnd[label][f"{kind}_ms"] for rnd in by_round.values()), 1
                )
        out.append(first)
    return out


def goals(rows, args):
    """The goals of the default COCO RFPN config: FLOP ratios at the counted COCO size (else the
    timed size), time ratios at the timed size."""
    row = next((r for r in rows if r["model"] == DEFAULT), None)
    if row is None:
        return []
    size = args.count_size or args.image_size
    out = []
    for column, limit in GOALS:
        if "flop" in column:
            kind = column.split("_")[0]
            key = f"c{size}_{kind}_flop_ratio"
        else:
            key = column
        if key in row:
            value = row[key]
            out.append(
                {
                    "goal": f"{DEFAULT} {key}",
                    "value": value,
                    "limit": f"<= {limit}",
                    "met": value <= limit,
                }
            )
    return out


def plot(rows, args, path):
    """Bars: training and inference FLOP ratios (counted size) and time ratios (timed size)."""
    from ..utils import pyplot

    plt = pyplot()
    size = args.count_size or args.image_size
    series = [
        (f"c{size}_train_flop_ratio", f"training FLOPs, {size} px"),
        (f"c{size}_infer_flop_ratio", f"inference FLOPs, {size} px"),
        ("train_time_ratio", f"training time, {args.image_size} px"),
        ("infer_time_ratio", f"inference time, {args.image_size} px"),
    ]
    series = [(k, name) for k, name in series if all(k in r for r in rows)]
    labels = [r["model"] for r in rows]
    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / max(1, len(series))
    for i, (key, name) in enumerate(series):
        xs = [j + i * width for j in range(len(rows))]
        ax.bar(xs, [r[key] for r in rows], width=width, label=name)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.axhline(1.5, color="red", lw=0.8, ls="--", label="training goal 1.5x")
    ax.axhline(1.2, color="orange", lw=0.8, ls="--", label="inference goal 1.2x")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))])
    ax.set_xticklabels(labels, rotation=25, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("ratio to the feed-forward model")
    ax.set_title(f"cost per configuration ({rows[0].get('device', 'cpu')})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    """Measure every configuration (a fresh process each on CPU), then report and save."""
    args = parse_args(argv)
    if not args.device:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    rounds = 1 if args.no_time else args.rounds
    tasks = []
    for r in range(rounds):
        shift = r % len(args.labels)
        order = args.labels[shift:] + args.labels[:shift]
        tasks += [(label, args, r) for label in order]
    rows = run_configurations(measure, tasks, args.device)
    if rounds > 1:
        write_csv(os.path.join(args.output_dir, "rounds.csv"), rows)
    table = combine(rows, args)
    save_tables(args.output_dir, table, goals(table, args))
    plot(table, args, os.path.join(args.output_dir, "cost.png"))
    print(f"\nwrote {args.output_dir}/results.csv, targets.csv, cost.png")
    return 0

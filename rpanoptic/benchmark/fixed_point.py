"""How far a trained model's recurrences are from their fixed points, and how many steps the
plain iteration and Anderson acceleration take to a halting tolerance.

For each recurrent layer, on the drives x it receives from --images validation images (batched):
the reference fixed point h* (plain steps until the relative change is below 1e-7, at most
--reference-steps; its residual is printed), the distance ||h_N - h*|| / ||h*|| at the trained
N, and for each tolerance in --tols and each solver (plain, Anderson with each memory in
--memories) the mean steps per image to halt and the distance then left. Also the time of
--time-steps steps of each solver (median of 3), no halting. Prints a table; writes
fixed_point.csv and fixed_point.png (steps against tolerance) to --output-dir.

  python tools/benchmark.py fixed-point \\
      --config-file configs/Synthetic/panoptic_rfpn_R_18_crbp.yaml \\
      --input datasets/synthetic_panoptic/val --images 8 --output-dir output/fixed_point \\
      MODEL.WEIGHTS output/demo/model_final.pth MODEL.DEVICE cpu
"""

import argparse
import contextlib
import os
import statistics
import time

import torch

from ..engine.setup import get_rpanoptic_cfg
from ..inference import Predictor, expand_inputs
from ..recurrence.iterate import anderson_iterate, picard_iterate
from .common import write_csv


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--input", nargs="+", required=True, help="images, folders or globs")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--tols", default="0.05,0.02,0.01,0.001", help="halting tolerances")
    p.add_argument("--memories", default="1,3,5", help="Anderson memories to compare")
    p.add_argument("--max-steps", type=int, default=200, help="steps allowed to reach a tol")
    p.add_argument("--reference-steps", type=int, default=1000)
    p.add_argument("--time-steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output-dir", default="output/fixed_point")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="MODEL.WEIGHTS CKPT and KEY VALUE")
    return p.parse_args(argv)


def layer_drives(predictor, paths):
    """{layer name: the drives x of all images, concatenated} (one forward per image)."""
    from detectron2.data import detection_utils as utils

    from ..evaluation.report import image_inputs

    drives = {name: [] for name in predictor.layers}
    for path in paths:
        image = utils.read_image(path, format=predictor.cfg.INPUT.FORMAT)
        with contextlib.ExitStack() as stack, torch.no_grad():
            records = {n: stack.enter_context(r.recording()) for n, r in predictor.layers.items()}
            predictor.model([image_inputs(predictor.cfg, image)])
        for name, record in records.items():
            drives[name].append(record.input)
    out = {}
    for name, xs in drives.items():
        same = [x for x in xs if x.shape[1:] == xs[0].shape[1:]]  # batch one shape only
        if len(same) < len(xs):
            print(f"{name}: {len(xs) - len(same)} images of another size left out")
        out[name] = torch.cat(same)
    return out


def distance(h, ref):
    """Mean over samples of ||h - ref|| / ||ref||."""
    num = torch.linalg.vector_norm((h - ref).flatten(1), dim=1)
    return float((num / torch.linalg.vector_norm(ref.flatten(1), dim=1)).mean())


def solvers(memories):
    """{label: run(step, x, limit, tol) -> (h, steps)}: the plain iteration, then Anderson."""
    out = {"plain": lambda f, x, n, tol: picard_iterate(f, x, x * 0, n, tol, False)[:2]}
    for m in memories:
        out[f"anderson {m}"] = lambda f, x, n, tol, m=m: anderson_iterate(
            f, x, x * 0, n, tol, m, False
        )[:2]
    return out


@torch.no_grad()
def measure_layer(name, rec, x, args):
    step = rec.cell
    ref, ref_steps = picard_iterate(step, x, x * 0, args.reference_steps, 1e-7, False)[:2]
    residual = distance(step(x, ref), ref)
    h_n = picard_iterate(step, x, x * 0, rec.timesteps, 0.0, False)[0]
    print(
        f"{name}: x {tuple(x.shape)}, reference residual {residual:.1e} after "
        f"{float(ref_steps.float().mean()):.0f} steps, h_N (N = {rec.timesteps}) at "
        f"{distance(h_n, ref):.3f} of h*"
    )
    rows = []
    runs = solvers([int(m) for m in args.memories.split(",") if m])
    for label, run in runs.items():
        times = []
        for _ in range(4):
            start = time.perf_counter()
            run(step, x, args.time_steps, 0.0)
            times.append(time.perf_counter() - start)
        ms = 1000 * statistics.median(times[1:])
        for tol in [float(t) for t in args.tols.split(",") if t]:
            h, steps = run(step, x, args.max_steps, tol)
            rows.append({
                "layer": name, "solver": label, "tol": tol,
                "steps": round(float(steps.float().mean()), 2),
                "distance": round(distance(h, ref), 4),
                "distance_at_N": round(distance(h_n, ref), 4),
                f"ms_{args.time_steps}_steps": round(ms, 1),
                "batch": x.shape[0],
            })  # fmt: skip
    return rows


def plot(rows, path):
    from ..utils import pyplot

    plt = pyplot()
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    fig, axes = plt.subplots(1, len(layers), figsize=(4.5 * len(layers), 3.8), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for solver in dict.fromkeys(r["solver"] for r in rows):
            pts = [
                (r["tol"], r["steps"]) for r in rows if (r["layer"], r["solver"]) == (layer, solver)
            ]
            ax.plot(*zip(*pts), marker="o", label=solver)
        ax.set(xscale="log", xlabel="halting tolerance", ylabel="mean steps", title=layer)
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    predictor = Predictor(get_rpanoptic_cfg(args.config_file, list(args.opts)))
    if not predictor.layers:
        raise SystemExit(f"{args.config_file} builds no recurrent layer: nothing to measure.")
    paths = expand_inputs(args.input)[: args.images]
    rows = []
    for name, x in layer_drives(predictor, paths).items():
        rows += measure_layer(name, predictor.layers[name], x, args)
    from tabulate import tabulate

    print(tabulate(rows, headers="keys", tablefmt="github"))
    write_csv(os.path.join(args.output_dir, "fixed_point.csv"), rows)
    plot(rows, os.path.join(args.output_dir, "fixed_point.png"))
    print(f"\nwrote {args.output_dir}/fixed_point.csv, fixed_point.png")
    return 0

"""The backward solvers side by side: what each gradient costs and how far it is from
the implicit gradient.

Part 1, gradient error. An hGRU cell (GN, 256 channels by default) is run N - 1 steps from zero
on a random drive; at that state the last step's graph is built and the incoming gradient v is a
fixed random direction (the loss <h_N, v>, so that the whole gradient goes through the solver).
For each solver ("neumann": the truncated series; "gmres": the same products combined by
GMRES, ``rpanoptic.recurrence.krylov``) and each K of ``--terms`` it computes the cell's
parameter gradient and its relative error against a reference: GMRES with ``--exact-terms``
products, whose own relative residual ||v - g (I - J)|| / ||v|| is printed (one more product).

Part 2, time. ``K*`` is the fewest GMRES products whose error is at most that of the Neumann
series at ``--neumann-steps`` (15, the paper's). One C-RBP training step (forward, loss =
mean(h^2) + LCP, backward) is then timed for each of

- ``crbp_ref``: C-RBP as the authors' code organises it (``rpanoptic.benchmark.engine``), Neumann;
- ``crbp``: this project's C-RBP, Neumann, K = 15;
- ``crbp+gmres@K*`` and ``crbp+gmres@15``;
- ``bptt``: BPTT over the N steps,

interleaved in one process so that all see the same load (medians of ``--repeats``, the first
dropped), with the memory each keeps for backward (``SavedTensorMeter``). It prints both tables
and the ratios of the engine's speed goals (docs/BENCHMARKS.md), and writes ``errors.csv``,
``times.csv`` and ``solvers.png`` to ``--output-dir``.

``projects/Pathfinder/solvers.py`` runs the same on a trained Pathfinder hGRU and its drive.

  python tools/benchmark.py solvers --shape 8,256,14,14 --timesteps 20 --repeats 5 --threads 1
"""

import argparse
import contextlib
import math
import os
import statistics
import time

from .common import write_csv
from .engine import reference_crbp


def build_parser() -> argparse.ArgumentParser:
    """The options (a project can add its own and call :func:`run` with its cell and drive)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", default="8,256,14,14", help="B,C,H,W of the input")
    p.add_argument("--timesteps", type=int, default=20, help="N")
    p.add_argument("--terms", default="1,2,3,4,6,8,10,15,20,30", help="values of K")
    p.add_argument("--neumann-steps", type=int, default=15, help="the Neumann K to match")
    p.add_argument("--exact-terms", type=int, default=150, help="GMRES K of the reference")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per mode")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default="output/benchmark_solvers")
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def _setup(args):
    import torch

    from ..recurrence import HGRUCell

    torch.manual_seed(args.seed)
    b, c, h, w = (int(v) for v in args.shape.split(","))
    cell = HGRUCell(c, timesteps=args.timesteps, gn_groups=math.gcd(32, c)).to(args.device)
    x = torch.randn(b, c, h, w, device=args.device)
    return cell, x


def gradient_errors(cell, x, args):
    """Rows of (solver, K, relative error of the parameter gradient), and the reference's
    relative residual."""
    import torch

    from ..recurrence.rbp import BACKWARD_SOLVERS

    with torch.no_grad():
        state = torch.zeros_like(x)
        for _ in range(args.timesteps - 1):
            state = cell(x, state)
    h_in = state.requires_grad_()
    out = cell(x, h_in)
    v = torch.randn_like(out)
    params = [p for p in cell.parameters() if p.requires_grad]

    def parameter_gradient(g):
        return torch.cat(
            [t.flatten() for t in torch.autograd.grad(out, params, g, retain_graph=True)]
        )

    g_ref, _, _ = BACKWARD_SOLVERS["gmres"](out, h_in, v, args.exact_terms)
    (g_ref_j,) = torch.autograd.grad(out, h_in, g_ref, retain_graph=True)
    residual = ((v - g_ref + g_ref_j).norm() / v.norm()).item()
    reference = parameter_gradient(g_ref)
    rows = []
    for solver in ("neumann", "gmres"):
        for k in sorted({int(t) for t in args.terms.split(",")} | {args.neumann_steps}):
            g, _, _ = BACKWARD_SOLVERS[solver](out, h_in, v, k)
            error = (parameter_gradient(g) - reference).norm() / reference.norm()
            rows.append({"solver": solver, "K": k, "grad_rel_error": float(f"{error.item():.4g}")})
    return rows, residual


def matched_terms(rows, neumann_steps: int) -> int:
    """The fewest GMRES products whose error is at most the Neumann series' at neumann_steps
    (the largest K measured when none is)."""
    target = next(
        r["grad_rel_error"] for r in rows if r["solver"] == "neumann" and r["K"] == neumann_steps
    )
    gmres = sorted((r["K"], r["grad_rel_error"]) for r in rows if r["solver"] == "gmres")
    return next((k for k, e in gmres if e <= target), gmres[-1][0])


def step_times(cell, x, args, k_star: int):
    """Median ms of one training step and MB kept for backward, per mode, interleaved."""
    import torch

    from ..recurrence import Recurrence
    from ..recurrence.memory import SavedTensorMeter

    n, k = args.timesteps, args.neumann_steps
    recs = {
        "crbp_ref": Recurrence(cell, n, grad="crbp", neumann_steps=k),
        "crbp": Recurrence(cell, n, grad="crbp", neumann_steps=k),
        f"crbp+gmres@{k_star}": Recurrence(cell, n, neumann_steps=k_star, backward_solver="gmres"),
        f"crbp+gmres@{k}": Recurrence(cell, n, neumann_steps=k, backward_solver="gmres"),
        "bptt": Recurrence(cell, n, grad="bptt"),
    }
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def step(name, rec, meter=None):
        """One training step; the MB its forward kept for backward when ``meter`` is given."""
        with rec.using(lcp_collected=True):
            with meter or contextlib.nullcontext():
                out, lcp = reference_crbp(rec, x) if name == "crbp_ref" else (rec(x), rec.lcp)
            kept = meter.bytes() / 2**20 if meter is not None else 0.0
            (out.square().mean() + (0 if lcp is None else lcp)).backward()
        return kept

    saved, times = {}, {name: [] for name in recs}
    for name, rec in recs.items():
        rec.train()
        saved[name] = step(name, rec, SavedTensorMeter(exclude=cell.parameters()))
    for _ in range(args.repeats):
        for name, rec in recs.items():
            cell.zero_grad(set_to_none=True)
            sync()
            start = time.perf_counter()
            step(name, rec)
            sync()
            times[name].append(1000 * (time.perf_counter() - start))
    return [
        {
            "mode": name,
            "step_ms": round(statistics.median(t[1:] or t), 1),
            "saved_mb": float(f"{saved[name]:.3g}"),
        }
        for name, t in times.items()
    ]


def plot(errors, times, k_star, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for solver, style in (("neumann", "o-"), ("gmres", "s-")):
        pts = [(r["K"], r["grad_rel_error"]) for r in errors if r["solver"] == solver]
        left.semilogy(*zip(*pts), style, label=solver)
    target = next(
        r["grad_rel_error"]
        for r in errors
        if r["solver"] == "neumann" and r["K"] == args.neumann_steps
    )
    left.axhline(target, color="gray", ls=":", label=f"Neumann, K = {args.neumann_steps}")
    left.axvline(k_star, color="gray", ls="--", label=f"K* = {k_star}")
    left.set(xlabel="vector-Jacobian products K", ylabel="relative error of the gradient")
    left.legend()
    names = [r["mode"] for r in times]
    right.barh(names, [r["step_ms"] for r in times])
    right.invert_yaxis()
    right.set(xlabel="training step, ms (median)", title=f"N = {args.timesteps}, {args.shape}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    import torch

    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cell, x = _setup(args)
    return run(args, cell, x)


def run(args, cell, x) -> int:
    """Both parts for ``cell`` driven by ``x`` (``args`` from :func:`build_parser`); prints the
    tables and writes them with the plot to ``args.output_dir``."""
    from tabulate import tabulate

    errors, residual = gradient_errors(cell, x, args)
    k_star = matched_terms(errors, args.neumann_steps)
    print(tabulate(errors, headers="keys", tablefmt="github"))
    print(f"\nreference: GMRES, K = {args.exact_terms}, relative residual {residual:.2e}")
    print(
        f"K* = {k_star}: the fewest GMRES products at most Neumann-{args.neumann_steps}'s error\n"
    )
    times = step_times(cell, x, args, k_star)
    print(tabulate(times, headers="keys", tablefmt="github"))
    ms = {r["mode"]: r["step_ms"] for r in times}
    fast = ms[f"crbp+gmres@{k_star}"]
    print(
        f"\ncrbp+gmres@{k_star} / crbp_ref: {fast / ms['crbp_ref']:.3f} (goal <= 0.8); "
        f"/ bptt: {fast / ms['bptt']:.3f} (goal <= 0.6); "
        f"crbp / crbp_ref: {ms['crbp'] / ms['crbp_ref']:.3f}; "
        f"crbp / bptt: {ms['crbp'] / ms['bptt']:.3f}"
    )
    os.makedirs(args.output_dir, exist_ok=True)
    for row in errors:
        row.update(shape=args.shape, timesteps=args.timesteps, reference_residual=f"{residual:.2e}")
    write_csv(os.path.join(args.output_dir, "errors.csv"), errors)
    for row in times:
        row.update(shape=args.shape, timesteps=args.timesteps, k_star=k_star)
    write_csv(os.path.join(args.output_dir, "times.csv"), times)
    plot(errors, times, k_star, args, os.path.join(args.output_dir, "solvers.png"))
    print(f"wrote {args.output_dir}/errors.csv, times.csv, solvers.png")
    return 0

"""What fewer Neumann terms save and what they cost in gradient error (the
``NEUMANN_RTOL`` lever).

For one hGRU recurrence trained with RBP on the loss <h_N, v> (v a fixed random direction, so
that the gradient is the implicit part alone; the penalty's gradient in C-RBP does not go
through the series), it computes the gradient of the cell's parameters with a long series
(``--exact-terms``, the reference: the implicit gradient to within the series' tail). Then,
for each K in ``--terms`` and each relative tolerance in ``--rtols``, it records the step time
(median of ``--repeats``), the mean number of terms the series added, and the relative error
||g - g_ref|| / ||g_ref|| of the parameters' gradient. It prints a table and writes
``neumann_tradeoff.csv`` to ``--output-dir``.

  python tools/benchmark.py neumann --shape 8,256,14,14 --timesteps 20 --threads 1
"""

import argparse
import math
import os
import statistics
import time

from .common import save_tables


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", default="8,256,14,14", help="B,C,H,W of the input")
    p.add_argument("--timesteps", type=int, default=20, help="N")
    p.add_argument("--terms", default="15", help="values of K (neumann_steps)")
    p.add_argument("--rtols", default="0,0.001,0.01,0.05,0.1", help="values of neumann_rtol")
    p.add_argument("--exact-terms", type=int, default=200, help="K of the reference gradient")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default="output/neumann_tradeoff")
    return p.parse_args(argv)


def gradient(cell, x, v, timesteps, terms, rtol):
    """One RBP training step's parameter gradient (flattened), mean terms added, seconds."""
    import torch

    from ..recurrence import Recurrence

    rec = Recurrence(cell, timesteps, grad="rbp", neumann_steps=terms, neumann_rtol=rtol)
    rec.train()
    cell.zero_grad(set_to_none=True)
    start = time.perf_counter()
    h = rec(x)
    (h * v).sum().backward()
    seconds = time.perf_counter() - start
    flat = torch.cat([p.grad.flatten() for p in cell.parameters()])
    stats = rec.neumann_stats(x.device)
    return flat, (stats[1] / stats[2].clamp_min(1)).item(), seconds


def run(args):
    import torch

    from ..recurrence import HGRUCell
    from ..recurrence.diagnostics import spectral_radius

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    b, c, h, w = (int(v) for v in args.shape.split(","))
    cell = HGRUCell(c, timesteps=args.timesteps, gn_groups=math.gcd(32, c))
    x = torch.randn(b, c, h, w)
    v = torch.randn(b, c, h, w)
    with torch.no_grad():
        state = torch.zeros_like(x)
        for _ in range(args.timesteps):
            state = cell(x, state)
    radius = spectral_radius(cell, x, state).mean().item()
    reference, _, _ = gradient(cell, x, v, args.timesteps, args.exact_terms, 0.0)
    rows = []
    for terms in (int(k) for k in args.terms.split(",")):
        for rtol in (float(r) for r in args.rtols.split(",")):
            times, used = [], 0.0
            for _ in range(args.repeats):
                flat, used, seconds = gradient(cell, x, v, args.timesteps, terms, rtol)
                times.append(seconds)
            error = ((flat - reference).norm() / reference.norm()).item()
            rows.append(
                {
                    "shape": args.shape,
                    "timesteps": args.timesteps,
                    "spectral_radius": round(radius, 3),
                    "neumann_steps": terms,
                    "neumann_rtol": rtol,
                    "mean_terms": round(used, 2),
                    "step_ms": round(1000 * statistics.median(times), 1),
                    "grad_rel_error": float(f"{error:.3g}"),
                }
            )
    return rows


def main(argv=None):
    args = parse_args(argv)
    rows = run(args)
    save_tables(args.output_dir, rows, [])
    os.replace(
        os.path.join(args.output_dir, "results.csv"),
        os.path.join(args.output_dir, "neumann_tradeoff.csv"),
    )
    print(f"\nwrote {args.output_dir}/neumann_tradeoff.csv")
    return 0

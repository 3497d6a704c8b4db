"""Where a C-RBP training step's CUDA memory peak comes from (needs a GPU).

For one hGRU recurrence (256 channels, GN, N = 10, K = 15) on an input of --shape, one
training step (loss = mean(h^2) + LCP, backward) is measured in several variants: bptt, rbp
(no penalty), crbp, crbp with the penalty left out of the loss, crbp with cuDNN disabled, and
crbp under a memory cap (torch.cuda.set_per_process_memory_fraction). Then the pieces of the
penalty alone on the cell: the vector-Jacobian product, and its double backward, with and
without cuDNN. Prints a table and writes --csv.

What it showed on an H100 (results/benchmarks/cuda_lcp_memory_h100_*.csv): the penalty's double
backward lets cuDNN choose algorithms whose workspace grows with the free memory (9.7 GB at 2 x
256 x 128 x 128); under a cap it falls back to others and the same step peaks at 1.6 GB.

  python tools/benchmark.py lcp-memory --shape 2,256,128,128 --cap-gb 4.8 --csv out.csv
"""

import argparse
import sys

import torch

from ..recurrence import HGRUCell, Recurrence
from ..recurrence.lcp import ones_vjp
from .common import timed, write_csv


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", default="2,256,64,64", help="B,C,H,W of the recurrence's input")
    p.add_argument("--cap-gb", type=float, default=4.8, help="the capped variant's memory (GB)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per variant")
    p.add_argument("--csv", default="", help="write the rows here")
    return p.parse_args(argv)


def measure(fn, repeats):
    """(peak growth MB of one call after a warm-up, median ms over ``repeats`` calls)."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return peak, 1000 * timed(fn, 0, repeats, torch.cuda.synchronize)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("error: this probe needs a CUDA device", file=sys.stderr)
        return 2
    shape = tuple(int(v) for v in args.shape.split(","))
    torch.manual_seed(0)
    cell = HGRUCell(shape[1], norm="GN", timesteps=10).cuda()
    x = torch.randn(*shape, device="cuda")
    h = torch.randn(*shape, device="cuda")

    def step(grad, with_lcp=True):
        rec = Recurrence(cell, 10, grad=grad, neumann_steps=15).train()

        def run():
            with rec.using(lcp_collected=True):
                out = rec(x)
                loss = out.square().mean()
                if rec.constrained and with_lcp:
                    loss = loss + rec.lcp
            loss.backward()

        return run

    def penalty(double_backward):
        def run():
            h_in = h.detach().requires_grad_()
            u = ones_vjp(cell(x, h_in), h_in, create_graph=double_backward)
            if double_backward:
                u.sum().backward()

        return run

    variants = [
        ("bptt step", step("bptt"), True),
        ("rbp step", step("rbp"), True),
        ("crbp step", step("crbp"), True),
        ("crbp step, penalty not in the loss", step("crbp", with_lcp=False), True),
        ("crbp step, cuDNN off", step("crbp"), False),
        ("penalty VJP", penalty(False), True),
        ("penalty VJP + double backward", penalty(True), True),
        ("penalty VJP + double backward, cuDNN off", penalty(True), False),
    ]
    rows = []
    for name, fn, cudnn in variants:
        with torch.backends.cudnn.flags(enabled=cudnn):
            peak, ms = measure(fn, args.repeats)
        rows.append(
            dict(
                variant=name, shape=args.shape, cap_gb=0, peak_mb=round(peak), step_ms=round(ms, 1)
            )
        )
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gb / total))
    peak, ms = measure(step("crbp"), args.repeats)
    rows.append(
        dict(variant="crbp step, capped", shape=args.shape, cap_gb=args.cap_gb,
             peak_mb=round(peak), step_ms=round(ms, 1))
    )  # fmt: skip
    print(f"{'variant':44s} {'peak MB':>8s} {'step ms':>8s}   ({torch.cuda.get_device_name(0)})")
    for r in rows:
        print(f"{r['variant']:44s} {r['peak_mb']:8d} {r['step_ms']:8.1f}")
    if args.csv:
        write_csv(args.csv, rows)
    return 0

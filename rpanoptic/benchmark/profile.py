"""Where a recurrence's training step spends its time: ``torch.profiler`` over a few steps of
an hGRU recurrence, split into the engine's named phases (``rpanoptic.recurrence.phases``).

For each learning mode it prints, per training step (forward, loss = mean(h^2) + LCP, backward):
the time of each phase and its share of the step, the cost of one graph-free step and of one
vector-Jacobian product of the Neumann series, and the operators with the most self time. It
writes phases.csv, operators.csv and phases.png to --output-dir, and with --trace a Chrome
trace per mode (open it in chrome://tracing or Perfetto).

  python tools/benchmark.py profile --shape 8,256,14,14 --steps 20 --grads bptt,crbp,crbp+compile

A mode with "+compile" runs its graph-free steps through ``torch.compile``
(``Recurrence(compile_steps=True)``); the warm-up step compiles them.

Times are the profiler's host times. On a GPU, run with CUDA_LAUNCH_BLOCKING=1 so that each
phase's host time includes its kernels; the operator table then also lists device times.
"""

import argparse
import os

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from ..recurrence import GRAD_MODES, HGRUCell, Recurrence
from ..recurrence.phases import PHASES
from .common import write_csv

PARTS = ("forward", "backward")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", default="8,256,14,14", help="B,C,H,W of the input and state")
    p.add_argument("--steps", type=int, default=20, help="N")
    p.add_argument("--neumann-steps", type=int, default=15, help="K")
    p.add_argument(
        "--grads", default="bptt,crbp", help=f"of: {', '.join(GRAD_MODES)}, each +compile or not"
    )
    p.add_argument("--kernel-size", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="profiled steps (after one warm-up)")
    p.add_argument("--top", type=int, default=12, help="operators listed per mode")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--trace", action="store_true", help="also write trace_<grad>.json")
    p.add_argument("--output-dir", default="output/profile_recurrence")
    args = p.parse_args(argv)
    bad = [g for g in args.grads.split(",") if g.removesuffix("+compile") not in GRAD_MODES]
    if bad:
        p.error(f"unknown --grads {bad}; known: {', '.join(GRAD_MODES)}")
    return args


def profile_mode(grad: str, args):
    """Profile ``args.repeats`` training steps of one mode. Returns (phase rows, operator rows,
    the profiler)."""
    shape = tuple(int(v) for v in args.shape.split(","))
    torch.manual_seed(0)
    groups = min(32, shape[1])
    cell = HGRUCell(shape[1], args.kernel_size, "GN", timesteps=args.steps, gn_groups=groups)
    mode = grad.removesuffix("+compile")
    rec = Recurrence(
        cell, args.steps, grad=mode, neumann_steps=args.neumann_steps, compile_steps=mode != grad
    )
    rec.to(args.device).train()
    x = torch.randn(shape, device=args.device, requires_grad=True)

    def step():
        with record_function("forward"):
            h = rec(x)
            loss = h.square().mean() + (rec.lcp if rec.lcp is not None else 0)
        with record_function("backward"):
            loss.backward()

    step()  # warm-up: allocator, kernels
    activities = [ProfilerActivity.CPU]
    if args.device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(args.repeats):
            step()
    totals = {e.key: e.cpu_time_total for e in prof.key_averages()}
    ms = {name: totals.get(name, 0.0) / 1000 / args.repeats for name in PARTS}
    for name in PHASES:
        ms[name] = totals.get(f"recurrence/{name}", 0.0) / 1000 / args.repeats
    step_ms = ms["forward"] + ms["backward"]
    inner = {"forward": [], "backward": []}
    for name in PHASES:
        inner["backward" if name.startswith("backward/") else "forward"].append(name)
    rows = []
    for part in PARTS:
        for name in inner[part]:
            if ms[name] > 0:
                rows.append({"grad": grad, "part": part, "phase": name, "ms": ms[name]})
        rest = ms[part] - sum(ms[name] for name in inner[part])
        other = f"{part}: other"
        if part == "backward" and mode in ("bptt", "cbptt"):
            other = "backward: through the unrolled graph"
        rows.append({"grad": grad, "part": part, "phase": other, "ms": rest})
    for row in rows:
        row["share"] = row["ms"] / step_ms
    rows.append({"grad": grad, "part": "step", "phase": "step", "ms": step_ms, "share": 1.0})
    per = {}
    if ms["graph_free_steps"] > 0:
        per["one graph-free step"] = ms["graph_free_steps"] / max(args.steps - 1, 1)
    if ms["backward/neumann_series"] > 0 and args.neumann_steps > 0:
        per["one Neumann vector-Jacobian product"] = (
            ms["backward/neumann_series"] / args.neumann_steps
        )
    for name, value in per.items():
        rows.append({"grad": grad, "part": "unit", "phase": name, "ms": value, "share": ""})
    device_key = "self_device_time_total" if args.device.startswith("cuda") else None
    ops = []
    averages = [e for e in prof.key_averages() if not e.key.startswith(("recurrence/", *PARTS))]
    for e in sorted(averages, key=lambda e: -e.self_cpu_time_total)[: args.top]:
        op = {"grad": grad, "operator": e.key, "calls_per_step": e.count / args.repeats}
        op["self_cpu_ms_per_step"] = e.self_cpu_time_total / 1000 / args.repeats
        op["self_cpu_share"] = op["self_cpu_ms_per_step"] / step_ms
        if device_key:
            op["self_device_ms_per_step"] = getattr(e, device_key, 0) / 1000 / args.repeats
        ops.append(op)
    return rows, ops, prof


def plot(rows, path):
    """Stacked horizontal bars: each mode's step split into its phases."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grads = list(dict.fromkeys(r["grad"] for r in rows))
    parts = [r for r in rows if r["part"] in PARTS]
    names = list(dict.fromkeys(r["phase"] for r in parts))
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.7 * len(grads)))
    for i, grad in enumerate(grads):
        left = 0.0
        for r in (r for r in parts if r["grad"] == grad):
            c = colors(names.index(r["phase"]) % 10)
            ax.barh(i, r["ms"], left=left, color=c, label=r["phase"] if i == 0 else None)
            left += r["ms"]
    handles = {}
    for r in parts:  # one legend entry per phase, whichever mode shows it first
        if r["phase"] not in handles:
            handles[r["phase"]] = plt.Rectangle((0, 0), 1, 1, color=colors(names.index(r["phase"])))
    ax.legend(handles.values(), handles.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    ax.set_yticks(range(len(grads)), grads)
    ax.invert_yaxis()  # the first mode on top
    ax.set_xlabel("ms per training step")
    ax.set_title("where a training step's time goes", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)
    all_rows, all_ops = [], []
    for grad in args.grads.split(","):
        rows, ops, prof = profile_mode(grad, args)
        all_rows += rows
        all_ops += ops
        print(f"\n{grad}: shape {args.shape}, N = {args.steps}, K = {args.neumann_steps}")
        for r in rows:
            share = f"{100 * r['share']:5.1f}%" if r["share"] != "" else ""
            print(f"  {r['part']:8s} {r['phase']:38s} {r['ms']:9.1f} ms {share}")
        print("  operators by self time:")
        for op in ops:
            print(
                f"    {op['operator'][:52]:52s} {op['calls_per_step']:6.0f} calls "
                f"{op['self_cpu_ms_per_step']:9.1f} ms {100 * op['self_cpu_share']:5.1f}%"
            )
        if args.trace:
            prof.export_chrome_trace(os.path.join(args.output_dir, f"trace_{grad}.json"))
    write_csv(os.path.join(args.output_dir, "phases.csv"), all_rows)
    write_csv(os.path.join(args.output_dir, "operators.csv"), all_ops)
    plot(all_rows, os.path.join(args.output_dir, "phases.png"))
    print(f"\nwrote {args.output_dir}/phases.csv, operators.csv, phases.png")
    return 0

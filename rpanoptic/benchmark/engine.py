"""Benchmark the recurrence engine: memory and time of one training step against N and the mode.

For each input shape (a mask-head batch of RoIs and an FPN level), each learning mode and each
N it measures, for one training step of an hGRU recurrence (forward, loss = mean(h^2) + LCP,
backward). The modes are bptt, cbptt, rbp, crbp; "rbp+compile" and "crbp+compile" (the
graph-free steps through torch.compile, ``Recurrence(compile_steps=True)``; compiled in a
warm-up step at the full shape, not timed); "crbp+dbwd" (the penalty's gradient by double
backward, ``lcp_gradient="double_backward"``, instead of the default forward-mode product); and
"crbp_ref", C-RBP as the authors' code
organises it, for comparison: the last step's graph and the penalty's double-backward graph are
kept from the forward pass, and a hook on h_N replaces its gradient by the Neumann sum through
that graph (no recomputation, more memory). It records:

- saved_mb: the graph kept for backward at the end of the forward pass (unique non-parameter
  storages, ``SavedTensorMeter``);
- peak_mb: peak memory of the step: ``torch.cuda.max_memory_allocated`` on GPU; on CPU the
  growth of the process's peak RSS during the step (each configuration in a fresh process);
- step_ms: median wall time of the step over ``--repeats`` runs after a warm-up;
- syncs: host synchronisations (``Tensor.item``/``__bool__``/... calls) during backward;
- infer_ms, finite_check_pct: median inference forward at N steps (check_finite on, the
  default) and how much slower it is than with the check off (same process, interleaved);
- graph_free_step_ms: median time of one step without a graph (eval mode), the step that
  ``compile_steps`` compiles.

It prints a table, checks the targets below on ratios measured in this one run, and writes
``results.csv``, ``targets.csv`` and ``benchmark.png`` to ``--output-dir``.

Example:  python tools/benchmark.py engine --shapes mask,fpn --repeats 3
"""

import argparse
import os
import statistics
import time

from .common import peak_rss_mb, run_configurations, save_tables

SHAPES = {"mask": (32, 256, 14, 14), "mask8": (8, 256, 14, 14), "fpn": (2, 256, 64, 64)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", default="1,2,3,5,10,20,40", help="values of N")
    p.add_argument(
        "--grads",
        default="bptt,cbptt,rbp,crbp",
        help="learning modes: bptt, cbptt, rbp, crbp, rbp+compile, crbp+compile, crbp_ref, "
        "crbp+dbwd (the penalty's gradient by double backward)",
    )
    p.add_argument("--shapes", default="mask,fpn", help=f"any of {','.join(SHAPES)}")
    p.add_argument("--neumann-steps", type=int, default=15, help="K")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per configuration")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--norm", default="GN")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads per configuration (0: torch's default); 1 on a machine shared with "
        "other jobs, where OpenMP threads that wait for a busy core distort the timings",
    )
    p.add_argument("--output-dir", default="output/benchmark_recurrence")
    return p.parse_args(argv)


def _cuda():
    import torch

    return torch.cuda.is_available()


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reference_crbp(rec, x):
    """C-RBP organised as the authors' code does it: N - 1 steps without a graph, the last one
    with its graph and the penalty's double-backward graph kept until backward, and a hook on
    h_N that turns the incoming gradient v into sum_k v J^k through the kept graph. Same
    gradient as ``Recurrence(grad="crbp")`` (up to rounding); returns (h_N, lcp)."""
    import torch

    from ..recurrence import lcp_penalty

    cell = rec.cell
    with torch.no_grad():
        h = torch.zeros_like(x)
        for _ in range(rec.timesteps - 1):
            h = cell(x, h)
    h_prev = h.detach().requires_grad_()
    h_last = cell(x, h_prev)
    lcp = lcp_penalty(h_last, h_prev, rec.lcp_tau, rec.lcp_reduction)

    def neumann(v):
        handle.remove()  # the products below run backward from h_last: no hook there
        total, term = v, v
        for _ in range(rec.neumann_steps):
            (term,) = torch.autograd.grad(h_last, h_prev, term, retain_graph=True)
            total = total + term
        return total

    handle = h_last.register_hook(neumann)
    return h_last, lcp


def measure(shape_name, grad, timesteps, args):
    """One configuration (runs in its own process on CPU). Returns a result row."""
    import torch

    from ..recurrence import HGRUCell, Recurrence
    from ..recurrence.memory import HostSyncCounter, SavedTensorMeter

    torch.manual_seed(0)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    b, c, h, w = SHAPES[shape_name]
    cell = HGRUCell(c, norm=args.norm, timesteps=timesteps).to(device)
    mode, _, variant = grad.partition("+")
    rec = Recurrence(
        cell,
        timesteps,
        grad="crbp" if mode == "crbp_ref" else mode,
        neumann_steps=args.neumann_steps,
        compile_steps=variant == "compile",
        lcp_gradient="double_backward" if variant == "dbwd" else "jvp",
    ).train()

    def forward(x):
        if mode == "crbp_ref":
            return reference_crbp(rec, x)
        out = rec(x)
        return out, rec.lcp

    def step(x, meter=None, counter=None):
        if meter is None:
            out, lcp = forward(x)
        else:
            with meter:
                out, lcp = forward(x)
        loss = out.square().mean() + (lcp if lcp is not None else 0)
        saved = meter.bytes() if meter is not None else 0
        if counter is None:
            loss.backward()
        else:
            with counter:
                loss.backward()
        return saved

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    step(torch.randn(1, c, 8, 8, device=device, requires_grad=True))  # load kernels, small
    x = torch.randn(b, c, h, w, device=device, requires_grad=True)
    if variant == "compile":  # compile at this shape (train and eval) before measuring
        step(x)
        with torch.no_grad():
            rec.eval()(x)
        rec.train()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = max(_rss_mb(), peak_rss_mb())
    counter = HostSyncCounter()
    saved = step(x, SavedTensorMeter(exclude=cell.parameters()), counter)
    sync()
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = max(0.0, peak_rss_mb() - base)
    times = []
    for _ in range(args.repeats):
        cell.zero_grad(set_to_none=True)
        x.grad = None
        sync()
        start = time.perf_counter()
        step(x)
        sync()
        times.append((time.perf_counter() - start) * 1000)
    # The finiteness check (on by default): inference forwards with and without it,
    # interleaved so that both see the same machine load.
    rec.eval()
    timed = {True: [], False: []}
    with torch.no_grad():
        for _ in range(args.repeats):
            for check in (True, False):
                rec.check_finite = check
                sync()
                start = time.perf_counter()
                rec(x)
                sync()
                timed[check].append((time.perf_counter() - start) * 1000)
    infer_on, infer_off = (statistics.median(timed[c]) for c in (True, False))
    rec.check_finite = True
    one_step = []  # one graph-free step (compiled in the +compile variants), in eval mode
    with torch.no_grad():
        state = rec(x)
        for _ in range(5 * args.repeats):
            sync()
            start = time.perf_counter()
            rec.step_without_graph(x, state)
            sync()
            one_step.append((time.perf_counter() - start) * 1000)
    return {
        "device": str(device),
        "shape": shape_name,
        "grad": grad,
        "timesteps": timesteps,
        "saved_mb": round(saved / 2**20, 3),
        "peak_mb": round(peak, 1),
        "step_ms": round(statistics.median(times), 1),
        "syncs": counter.count,
        "infer_ms": round(infer_on, 1),
        "finite_check_pct": round(100 * (infer_on - infer_off) / infer_off, 1),
        "graph_free_step_ms": round(statistics.median(one_step), 2),
    }


def run_all(args):
    tasks = [
        (shape, grad, n, args)
        for shape in args.shapes.split(",")
        for grad in args.grads.split(",")
        for n in (int(s) for s in args.steps.split(","))
    ]
    return run_configurations(measure, tasks, args.device)


def _find(rows, shape, grad, n):
    for r in rows:
        if (r["shape"], r["grad"], r["timesteps"]) == (shape, grad, n):
            return r
    return None


def check_targets(rows):
    """The targets of the recurrence engine, as ratios measured in this run."""
    out = []

    def add(name, value, limit, note):
        if value is not None:
            out.append(
                {
                    "target": name,
                    "value": round(value, 3),
                    "limit": limit,
                    "met": value <= limit,
                    "note": note,
                }
            )

    for shape in SHAPES:
        c2, c40 = _find(rows, shape, "crbp", 2), _find(rows, shape, "crbp", 40)
        b1 = _find(rows, shape, "bptt", 1)
        if c2 and c40:
            add(f"{shape}: crbp saved N=40 / N=2", c40["saved_mb"] / c2["saved_mb"], 1.05, "flat")
        if c40 and b1:
            add(
                f"{shape}: crbp saved N=40 / bptt N=1",
                c40["saved_mb"] / b1["saved_mb"],
                0.5,
                "below one BPTT step",
            )
    for shape in ("mask", "mask8"):
        b20, ref20 = _find(rows, shape, "bptt", 20), _find(rows, shape, "crbp_ref", 20)
        for grad in ("crbp", "crbp+compile"):
            c20 = _find(rows, shape, grad, 20)
            if c20 and b20:
                add(
                    f"{shape}: {grad} step / bptt step, N=20",
                    c20["step_ms"] / b20["step_ms"],
                    0.6,
                    "",
                )
            if c20 and ref20:
                add(
                    f"{shape}: {grad} step / crbp_ref step, N=20",
                    c20["step_ms"] / ref20["step_ms"],
                    0.8,
                    "against C-RBP organised as the authors' code",
                )
            b1 = _find(rows, shape, "bptt", 1)
            if c20 and b1:
                add(
                    f"{shape}: {grad} saved N=20 / bptt N=1",
                    c20["saved_mb"] / b1["saved_mb"],
                    0.2,
                    "memory kept for backward",
                )
    implicit = [r["syncs"] for r in rows if r["grad"].split("+")[0] in ("rbp", "crbp")]
    if implicit:
        add("host syncs in rbp/crbp backward (max)", max(implicit), 0, "none in the Neumann loop")
    return out


def write_outputs(rows, targets, outdir):
    from ..utils import pyplot

    plt = pyplot()

    save_tables(outdir, rows, targets)

    shapes = sorted({r["shape"] for r in rows}, key=list(SHAPES).index)
    metrics = [("saved_mb", "graph kept for backward (MB)"), ("peak_mb", "peak memory (MB)")]
    metrics.append(("step_ms", "training step (ms)"))
    fig, axes = plt.subplots(len(shapes), 3, figsize=(15, 4 * len(shapes)), squeeze=False)
    for i, shape in enumerate(shapes):
        for j, (key, label) in enumerate(metrics):
            ax = axes[i][j]
            for grad in dict.fromkeys(r["grad"] for r in rows):
                pts = [
                    (r["timesteps"], r[key])
                    for r in rows
                    if (r["shape"], r["grad"]) == (shape, grad)
                ]
                ax.plot(*zip(*pts), marker="o", label=grad)
            ax.set_xlabel("timesteps N")
            ax.set_ylabel(label)
            ax.set_title(f"{shape} {SHAPES[shape]} on {rows[0]['device']}")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "benchmark.png"), dpi=100)
    print(f"\nwrote {outdir}/results.csv, targets.csv, benchmark.png")


def main(argv=None):
    args = parse_args(argv)
    rows = run_all(args)
    targets = check_targets(rows)
    write_outputs(rows, targets, args.output_dir)
    return 0

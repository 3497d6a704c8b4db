"""Speed levers tried against the project's hGRU cell, interleaved in one process so that the
variants see the same load. Three time one C-RBP training step each (N = 20, K = 15):

- ``--lever fused``: the step's element-wise arithmetic written with fused operators
  (``addcmul`` for (alpha h + mu) and for kappa z + gamma c2 + omega z c2, ``lerp`` for
  h + g2 (candidate - h): six fewer element-wise kernels per step);
- ``--lever channels_last``: the cell's weights and the input and state in channels-last
  memory format;
- ``--lever compile_steps``: the graph-free steps through ``torch.compile``
  (``Recurrence(compile_steps=True)``; the first, compiling, step is dropped).

``--with-bptt`` adds a BPTT-20 step of the plain cell to the same loop and prints each step's
ratio to it, the speed goals' reference.

Two time only the part of the step they change:

- ``--lever inference_mode``: the 19 graph-free steps under ``torch.inference_mode()`` (then one
  copy of the state, as an inference tensor cannot enter the implicit step's graph) against
  ``torch.no_grad()``, as the engine runs them;
- ``--lever compiled_vjp``: the Neumann series (the last step's graph and its K = 15
  vector-Jacobian products with respect to the state) with that graph built by
  ``torch.compile`` (AOTAutograd) and the cell's parameters held constant, so that the compiled
  backward computes no weight gradients, against the eager graph the engine builds.

Prints the medians and their ratios (docs/BENCHMARKS.md says which levers were kept).

  python tools/benchmark.py levers --lever fused --repeats 6 --threads 1
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ..recurrence import HGRUCell, Recurrence
from ..recurrence.rbp import neumann_series


class FusedGatesCell(HGRUCell):
    """The same step as :class:`HGRUCell`, with fused element-wise operators."""

    def forward(self, x, h):
        f, (n1, n2, n3, n4) = self.nonlinearity, self.norms
        g1 = torch.sigmoid(n1(self.gain_gate(h)) + self.gain_bias)
        c1 = n2(F.conv2d(g1 * h, self.w_inh, padding=self.padding))
        z = f(x - f(torch.addcmul(self.mu, self.alpha, h) * c1))
        g2 = torch.sigmoid(n3(self.mix_gate(z)) + self.mix_bias)
        c2 = n4(F.conv2d(z, self.w_exc, padding=self.padding))
        candidate = f(torch.addcmul(self.gamma * c2, z, torch.addcmul(self.kappa, self.omega, c2)))
        return torch.lerp(h, candidate, g2)


def neumann_times(cell, x, h, terms, repeats, sync):
    """Median ms of (last step's graph + ``terms`` vector-Jacobian products) built eagerly and
    by ``torch.compile`` with constant parameters, interleaved; and the largest difference
    between the two series' sums."""
    params = {n: p.detach() for n, p in cell.named_parameters()}
    compiled = torch.compile(lambda x, h: torch.func.functional_call(cell, params, (x, h)))
    steps = {"plain": cell, "compiled_vjp": compiled}
    v = torch.randn_like(h)
    times, sums = {n: [] for n in steps}, {}
    for _ in range(repeats):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            with torch.enable_grad():
                h_in = h.detach().requires_grad_()
                g, _, _ = neumann_series(step(x, h_in), h_in, v, terms)
            sync()
            times[name].append(1000 * (time.perf_counter() - start))
            sums[name] = g
    diff = (sums["plain"] - sums["compiled_vjp"]).abs().max().item()
    return {n: statistics.median(t[1:]) for n, t in times.items()}, diff


def graph_free_times(cell, x, h, steps, repeats, sync):
    """Median ms of ``steps`` graph-free steps under ``no_grad`` and under ``inference_mode``
    (plus the copy out of it), interleaved; and the largest difference of the final states."""
    contexts = {"plain": torch.no_grad, "inference_mode": torch.inference_mode}
    times, states = {n: [] for n in contexts}, {}
    for _ in range(repeats):
        for name, context in contexts.items():
            sync()
            start = time.perf_counter()
            state = h
            with context():
                for _ in range(steps):
                    state = cell(x, state)
            if name == "inference_mode":
                state = state.clone()
            sync()
            times[name].append(1000 * (time.perf_counter() - start))
            states[name] = state
    diff = (states["plain"] - states["inference_mode"]).abs().max().item()
    return {n: statistics.median(t[1:]) for n, t in times.items()}, diff


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--lever",
        default="fused",
        choices=["fused", "channels_last", "compile_steps", "inference_mode", "compiled_vjp"],
    )
    p.add_argument("--with-bptt", action="store_true", help="time a BPTT-20 step as well")
    p.add_argument("--shape", default="8,256,14,14", help="B,C,H,W")
    p.add_argument("--repeats", type=int, default=6, help="steps per cell (the first is dropped)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.shape.split(","))
    torch.manual_seed(0)
    plain = HGRUCell(shape[1], norm="GN", timesteps=20, gn_groups=min(32, shape[1])).to(args.device)
    kind = FusedGatesCell if args.lever == "fused" else HGRUCell
    other = kind(shape[1], norm="GN", timesteps=20, gn_groups=min(32, shape[1])).to(args.device)
    other.load_state_dict(plain.state_dict())
    x = torch.randn(shape, device=args.device)
    h = torch.randn(shape, device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    if args.lever == "inference_mode":
        med, diff = graph_free_times(plain, x, h, 19, args.repeats, sync)
        print(f"max |no_grad - inference_mode| of the state after 19 steps: {diff:.2e}")
        for name, ms in med.items():
            print(f"{name:15s} 19 graph-free steps: {ms:8.1f} ms")
        print(f"inference_mode / plain: {med['inference_mode'] / med['plain']:.3f}")
        return 0
    if args.lever == "compiled_vjp":
        med, diff = neumann_times(plain, x, h, 15, args.repeats, sync)
        print(f"max |plain - compiled| of the Neumann sum (K = 15): {diff:.2e}")
        for name, ms in med.items():
            print(f"{name:13s} graph + 15 VJPs: {ms:8.1f} ms")
        print(f"compiled_vjp / plain: {med['compiled_vjp'] / med['plain']:.3f}")
        return 0
    inputs = {"plain": x, args.lever: x}
    if args.lever == "channels_last":
        other = other.to(memory_format=torch.channels_last)
        inputs[args.lever] = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        diff = (plain(x, h) - other(inputs[args.lever], h)).abs().max().item()
    cells = {"plain": plain, args.lever: other}
    compiled = {args.lever: args.lever == "compile_steps"}
    recs = {
        n: Recurrence(c, 20, grad="crbp", neumann_steps=15, compile_steps=compiled.get(n, False))
        for n, c in cells.items()
    }
    if args.with_bptt:
        recs["bptt"] = Recurrence(plain, 20, grad="bptt")
        inputs["bptt"] = x
    times = {n: [] for n in recs}
    for _ in range(args.repeats):
        for name, rec in recs.items():
            rec.train()
            sync()
            start = time.perf_counter()
            with rec.using(lcp_collected=True):
                out = rec(inputs[name])
                (out.square().mean() + (0 if rec.lcp is None else rec.lcp)).backward()
            sync()
            times[name].append(1000 * (time.perf_counter() - start))
    med = {n: statistics.median(t[1:]) for n, t in times.items()}
    print(f"max |plain - {args.lever}| of one step: {diff:.2e}")
    for name, ms in med.items():
        print(f"{name:13s} {'BPTT' if name == 'bptt' else 'C-RBP'} step: {ms:8.1f} ms")
    print(f"{args.lever} / plain: {med[args.lever] / med['plain']:.3f}")
    if args.with_bptt:
        for name in ("plain", args.lever):
            print(f"{name} / bptt: {med[name] / med['bptt']:.3f}")
    return 0

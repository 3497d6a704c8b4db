"""RBP gradients against exact answers: the dense implicit gradient and long-run BPTT."""

import pytest
import torch
from _cells import LinearCell, drive, small_hgru

from rpanoptic.recurrence import Recurrence, lcp_penalty, neumann_series

STEPS = 400  # forward steps: enough for the tiny contractive cell to converge in float64


def rel_err(a, b):
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


def assert_grads_close(got, want, rtol, names=None):
    """Relative error of each gradient below rtol; gradients that vanish at the fixed point
    (e.g. the mix gate's bias, multiplied by candidate - h = 0) are compared in absolute terms."""
    scale = torch.linalg.vector_norm(torch.cat([w.flatten() for w in want])).item()
    for i, (a, b) in enumerate(zip(got, want)):
        err = torch.linalg.vector_norm(a - b).item()
        bound = rtol * torch.linalg.vector_norm(b).item() + 1e-9 * scale
        assert err <= bound, (names[i] if names else i, err, bound)


def fixed_point(cell, x, steps=STEPS):
    h = torch.zeros_like(x)
    with torch.no_grad():
        for _ in range(steps):
            h = cell(x, h)
    return h


def exact_implicit_grads(cell, x, v):
    """dL/d(x, params) for L = <v, h*> via a dense solve of g (I - J) = v at the fixed point."""
    h_star = fixed_point(cell, x.detach())
    n = h_star.numel()
    jac = torch.autograd.functional.jacobian(lambda h: cell(x.detach(), h), h_star)
    jac = jac.reshape(n, n)
    g = torch.linalg.solve((torch.eye(n, dtype=jac.dtype) - jac).T, v.reshape(n)).reshape_as(v)
    x_in = x.detach().requires_grad_()
    return torch.autograd.grad(cell(x_in, h_star), [x_in, *cell.parameters()], g)


def recurrence_grads(cell, x, v, grad, timesteps=STEPS, neumann_steps=200, **kw):
    rec = Recurrence(cell, timesteps, grad=grad, neumann_steps=neumann_steps, **kw).train()
    x_in = x.detach().requires_grad_()
    h = rec(x_in)
    return torch.autograd.grad((h * v).sum(), [x_in, *cell.parameters()]), rec


@pytest.mark.parametrize("norm", ["", "GN"])
@pytest.mark.parametrize("grad", ["rbp", "bptt"])
def test_gradient_matches_exact_implicit_gradient(norm, grad):
    cell = small_hgru(norm=norm)
    x, v = drive(), drive(seed=2, requires_grad=False)
    exact = exact_implicit_grads(cell, x, v)
    got, _ = recurrence_grads(cell, x, v, grad)
    assert len(got) == len(exact) == 1 + len(list(cell.parameters()))
    assert_grads_close(got, exact, 1e-3, ["x"] + [n for n, _ in cell.named_parameters()])


def test_rbp_matches_long_bptt():
    cell = small_hgru(norm="GN")
    x, v = drive(), drive(seed=2, requires_grad=False)
    rbp, _ = recurrence_grads(cell, x, v, "rbp")
    bptt, _ = recurrence_grads(cell, x, v, "bptt")
    assert_grads_close(rbp, bptt, 1e-3)


def test_error_shrinks_as_neumann_steps_grow():
    cell = small_hgru()
    x, v = drive(), drive(seed=2, requires_grad=False)
    exact = torch.cat([t.flatten() for t in exact_implicit_grads(cell, x, v)])
    errors = []
    for k in (0, 2, 5, 10, 20, 40):
        got, _ = recurrence_grads(cell, x, v, "rbp", neumann_steps=k)
        errors.append(rel_err(torch.cat([t.flatten() for t in got]), exact))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-3 < errors[0]


def test_linear_cell_closed_form():
    """h' = a h + b x: h* = b x / (1 - a); dL/da = <v, h*> / (1 - a); K-term truncation exact."""
    a, b, k = 0.5, 2.0, 6
    cell = LinearCell(a, b)
    x, v = drive(), drive(seed=2, requires_grad=False)
    got, _ = recurrence_grads(cell, x, v, "rbp", timesteps=200, neumann_steps=k)
    series = sum(a**i for i in range(k + 1))  # truncated (1 - a)^-1
    h_star = b * x.detach() / (1 - a)
    torch.testing.assert_close(got[0], series * b * v)
    torch.testing.assert_close(got[1], series * (v * h_star).sum())
    torch.testing.assert_close(got[2], series * (v * x.detach()).sum())


def test_divergent_series_keeps_last_good_partial_sum_and_counts_it():
    cell = LinearCell(1.5)  # J = 1.5 I: every term grows
    x, v = drive(), drive(seed=2, requires_grad=False)
    got, rec = recurrence_grads(cell, x, v, "rbp", timesteps=3, neumann_steps=10)
    # The first term already grows: only v J^0 = v is kept, for each of the 2 samples.
    torch.testing.assert_close(got[0], v * 1.0)
    fallbacks, terms, series = rec.neumann_stats(x.device).tolist()
    assert (fallbacks, terms, series) == (2.0, 0.0, 2.0)
    assert torch.isfinite(got[1]) and torch.isfinite(got[2])


def test_safeguard_is_per_sample():
    cell = LinearCell(0.5)
    x, v = drive(), drive(seed=2, requires_grad=False)
    v[1] = 0.0  # a sample with no incoming gradient is neither diverged nor harmful
    got, rec = recurrence_grads(cell, x, v, "rbp", timesteps=50, neumann_steps=5)
    assert rec.neumann_stats(x.device)[0].item() == 0
    assert torch.all(got[0][1] == 0)


@pytest.mark.parametrize("a", [0.5, 1.5])
def test_loss_scaling_scales_gradient_and_changes_nothing_else(a):
    x, v = drive(), drive(seed=2, requires_grad=False)
    runs = []
    for scale in (1.0, 1000.0):
        got, rec = recurrence_grads(
            LinearCell(a), x, v * scale, "rbp", timesteps=20, neumann_steps=8, neumann_rtol=1e-3
        )
        runs.append((got, rec.neumann_stats(x.device).clone()))
    (g1, s1), (g1000, s1000) = runs
    for p, q in zip(g1, g1000):
        torch.testing.assert_close(q, 1000.0 * p, rtol=1e-12, atol=0)
    assert torch.equal(s1, s1000)


def test_relative_tolerance_stops_the_series_early():
    cell = small_hgru()
    x, v = drive(), drive(seed=2, requires_grad=False)
    exact = exact_implicit_grads(cell, x, v)
    got, rec = recurrence_grads(cell, x, v, "rbp", neumann_steps=200, neumann_rtol=1e-6)
    _, terms, series = rec.neumann_stats(x.device).tolist()
    assert terms / series < 200
    assert_grads_close(got, exact, 1e-4)


def test_neumann_series_function_direct():
    """neumann_series on h' = A h with a dense A: g = sum_k v A^k."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(6, 6, generator=gen, dtype=torch.float64) * 0.2
    h = torch.randn(1, 6, dtype=torch.float64, generator=gen).requires_grad_()
    out = h @ a.T
    v = torch.randn(1, 6, dtype=torch.float64, generator=gen)
    g, diverged, terms = neumann_series(out, h, v, steps=5)
    expected = sum(v @ torch.linalg.matrix_power(a, k) for k in range(6))
    torch.testing.assert_close(g, expected)
    assert not diverged.any() and terms.tolist() == [5]


def test_crbp_penalty_gradient_is_exact():
    """crbp's custom backward of the LCP equals create_graph autograd at the detached last state."""
    cell = small_hgru(norm="GN")
    x, v = drive(), drive(seed=2, requires_grad=False)
    tau, steps = 0.05, 12  # a small tau so that the penalty is active
    rec = Recurrence(cell, steps, grad="crbp", neumann_steps=30, lcp_tau=tau).train()
    x_in = x.detach().requires_grad_()
    h = rec(x_in)
    got = torch.autograd.grad((h * v).sum() + 3.0 * rec.lcp, [x_in, *cell.parameters()])

    rbp, _ = recurrence_grads(cell, x, v, "rbp", timesteps=steps, neumann_steps=30)
    h_prev = fixed_point(cell, x.detach(), steps - 1).requires_grad_()
    x2 = x.detach().requires_grad_()
    penalty = lcp_penalty(cell(x2, h_prev), h_prev, tau)
    assert penalty.item() > 0
    torch.testing.assert_close(rec.lcp.detach(), penalty.detach())
    direct = torch.autograd.grad(3.0 * penalty, [x2, *cell.parameters()])
    for a, b, c in zip(got, rbp, direct):
        torch.testing.assert_close(a, b + c, rtol=1e-10, atol=1e-12)

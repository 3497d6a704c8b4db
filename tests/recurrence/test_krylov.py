"""GMRES backward (recurrence/krylov.py) against exact answers: a dense solve, the minimal-residual
combination computed densely, closed forms, and the Neumann series it replaces."""

import pytest
import torch
from _cells import LinearCell, MatrixCell, drive, small_hgru
from test_rbp import exact_implicit_grads, fixed_point, recurrence_grads, rel_err

from rpanoptic.recurrence.krylov import gmres_solve
from rpanoptic.recurrence.rbp import neumann_series


def flat(grads):
    return torch.cat([t.flatten() for t in grads])


def last_step(cell, x):
    """The graph h -> F(x, h) at the fixed point, as ImplicitStep's backward rebuilds it."""
    h = fixed_point(cell, x.detach()).requires_grad_()
    return cell(x.detach(), h), h


def dense_jacobians(cell, x, h):
    """Per-sample Jacobians d h_next / d h, (B, n, n), of a cell that keeps samples apart."""
    n = h[0].numel()
    full = torch.autograd.functional.jacobian(lambda s: cell(x.detach(), s), h.detach())
    full = full.reshape(h.shape[0], n, h.shape[0], n)
    return torch.stack([full[b, :, b, :] for b in range(h.shape[0])])


def test_full_krylov_space_gives_the_dense_solution():
    """With as many products as a sample has unknowns, g (I - J) = v is solved exactly."""
    cell = small_hgru(norm="GN")
    x, v = drive(), drive(seed=2, requires_grad=False)
    out, h = last_step(cell, x)
    n = h[0].numel()  # 50
    g, diverged, terms = gmres_solve(out, h, v, steps=n)
    jac = dense_jacobians(cell, x, h)
    eye = torch.eye(n, dtype=jac.dtype)
    for b in range(h.shape[0]):
        want = torch.linalg.solve((eye - jac[b]).T, v[b].reshape(n))
        assert rel_err(g[b].reshape(n), want) < 1e-9
    assert not diverged.any() and terms.tolist() == [n, n]


@pytest.mark.parametrize("steps", [1, 3, 6])
def test_few_products_give_the_minimal_residual_combination_then_one_step(steps):
    """u minimises ||v - u (I - J)|| over span(v, vJ, ..., vJ^(m-1)); the result is v + u J."""
    cell = small_hgru(norm="GN")
    x, v = drive(), drive(seed=2, requires_grad=False)
    out, h = last_step(cell, x)
    g, _, _ = gmres_solve(out, h, v, steps=steps)
    jac = dense_jacobians(cell, x, h)
    n = jac.shape[1]
    for b in range(h.shape[0]):
        krylov = [v[b].reshape(n)]
        for _ in range(steps - 1):
            krylov.append(krylov[-1] @ jac[b])
        basis = torch.stack(krylov)  # (m, n): the rows span the Krylov space
        a = basis @ (torch.eye(n, dtype=jac.dtype) - jac[b])  # each row times (I - J)
        coef = torch.linalg.lstsq(a.T, v[b].reshape(n)).solution
        u = coef @ basis
        torch.testing.assert_close(
            g[b].reshape(n), v[b].reshape(n) + u @ jac[b], rtol=1e-7, atol=1e-9
        )


def test_scaled_identity_is_solved_by_one_product():
    """J = a I: the Krylov space is span(v), and g = v / (1 - a) after one product."""
    cell = LinearCell(0.8)
    x, v = drive(), drive(seed=2, requires_grad=False)
    out, h = last_step(cell, x)
    g, _, _ = gmres_solve(out, h, v, steps=1)
    torch.testing.assert_close(g, v / 0.2, rtol=1e-12, atol=1e-12)
    n, _, _ = neumann_series(out, h, v, steps=1)
    torch.testing.assert_close(n, v * 1.8)  # the series is still far from 5 v


def test_relative_tolerance_stops_at_the_degree_of_the_minimal_polynomial():
    """J = A (x) I with a 2 x 2 A: the exact solution lies in a 2-dimensional Krylov space, so
    with a tolerance the iteration stops after 2 products and is exact."""
    a = torch.tensor([[0.5, 0.3], [-0.2, 0.6]], dtype=torch.float64)
    cell = MatrixCell(a)
    x, v = drive(), drive(seed=2, requires_grad=False)
    out, h = last_step(cell, x)
    g, diverged, terms = gmres_solve(out, h, v, steps=10, rtol=1e-9)
    assert terms.tolist() == [2, 2] and not diverged.any()
    # Per position, g_p (I - A) = v_p over the channels: g = v (I - A)^-1.
    want = torch.einsum("bihw,ij->bjhw", v, torch.linalg.inv(torch.eye(2, dtype=a.dtype) - a))
    torch.testing.assert_close(g, want, rtol=1e-9, atol=1e-10)


class _NaNForSample(torch.autograd.Function):
    """Zero forward; its backward is zero, but NaN for one sample (a Jacobian that breaks)."""

    @staticmethod
    def forward(ctx, h):
        return torch.zeros_like(h)

    @staticmethod
    def backward(ctx, grad):
        grad = torch.zeros_like(grad)
        grad[1] = float("nan")
        return grad


class _BrokenCell(torch.nn.Module):
    def forward(self, x, h):
        return 0.5 * h + x + _NaNForSample.apply(h)


def test_non_finite_product_stops_only_that_sample_and_counts_it():
    x, v = drive(), drive(seed=2, requires_grad=False)
    h = torch.zeros_like(x).requires_grad_()
    out = _BrokenCell()(x, h)
    g, diverged, terms = gmres_solve(out, h, v, steps=4)
    assert diverged.tolist() == [False, True]
    assert terms.tolist() == [4, 0]
    torch.testing.assert_close(g[0], v[0] / 0.5)  # J = 0.5 I: exact
    torch.testing.assert_close(g[1], v[1])  # no product kept: g = v


def test_zero_incoming_gradient_gives_zero_and_no_fallback():
    cell = small_hgru(norm="GN")
    x, v = drive(), drive(seed=2, requires_grad=False)
    v[1] = 0.0
    out, h = last_step(cell, x)
    g, diverged, _ = gmres_solve(out, h, v, steps=5)
    assert torch.all(g[1] == 0) and not diverged.any() and torch.isfinite(g).all()


def test_coupled_batch_is_one_system():
    """coupled=True: one Krylov space over the whole batch; with all its unknowns, exact."""
    cell = small_hgru(norm="GN")
    x, v = drive(), drive(seed=2, requires_grad=False)
    out, h = last_step(cell, x)
    n = h.numel()
    g, _, terms = gmres_solve(out, h, v, steps=n, coupled=True)
    jac = torch.autograd.functional.jacobian(lambda s: cell(x.detach(), s), h.detach())
    jac = jac.reshape(n, n)
    want = torch.linalg.solve((torch.eye(n, dtype=jac.dtype) - jac).T, v.reshape(n))
    assert rel_err(g.reshape(n), want) < 1e-9
    assert terms.tolist() == [n]


def test_loss_scaling_scales_the_gradient():
    cell = small_hgru(norm="GN")
    x, v = drive(), drive(seed=2, requires_grad=False)
    out, h = last_step(cell, x)
    g1, d1, t1 = gmres_solve(out, h, v, steps=6, rtol=1e-3)
    g2, d2, t2 = gmres_solve(out, h, 1000.0 * v, steps=6, rtol=1e-3)
    torch.testing.assert_close(g2, 1000.0 * g1, rtol=1e-9, atol=0)
    assert torch.equal(t1, t2) and torch.equal(d1, d2)


@pytest.mark.parametrize("norm", ["", "GN"])
def test_recurrence_with_gmres_gives_the_exact_implicit_gradient(norm):
    cell = small_hgru(norm=norm)
    x, v = drive(), drive(seed=2, requires_grad=False)
    exact = exact_implicit_grads(cell, x, v)
    got, rec = recurrence_grads(cell, x, v, "rbp", neumann_steps=50, backward_solver="gmres")
    assert rel_err(flat(got), flat(exact)) < 1e-8
    assert rec.neumann_stats(x.device).tolist() == [0.0, 100.0, 2.0]


def test_same_products_smaller_error_than_the_series():
    """For each K the GMRES gradient is nearer the implicit gradient than the Neumann one, and
    the gap widens with K (here 0.36 against 0.42 at K = 1, 0.007 against 0.15 at K = 8)."""
    cell = small_hgru(norm="GN")
    x, v = drive(), drive(seed=2, requires_grad=False)
    exact = flat(exact_implicit_grads(cell, x, v))
    ratios = []
    for k in (1, 2, 4, 8):
        neumann, _ = recurrence_grads(cell, x, v, "rbp", neumann_steps=k)
        gmres, _ = recurrence_grads(cell, x, v, "rbp", neumann_steps=k, backward_solver="gmres")
        ratios.append(rel_err(flat(gmres), exact) / rel_err(flat(neumann), exact))
    assert all(b < a < 1 for a, b in zip(ratios, ratios[1:])), ratios
    assert ratios[-1] < 0.1, ratios

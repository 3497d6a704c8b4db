"""The Lipschitz coefficient penalty: exact values, gradients, and that it makes cells contract."""

import pytest
import torch
from _cells import LinearCell, drive, small_hgru

from rpanoptic.recurrence import Recurrence, lcp_penalty, spectral_radius


def test_zero_for_strongly_contractive_cell():
    cell = LinearCell(0.3)
    rec = Recurrence(cell, 5, grad="crbp", lcp_tau=0.9).train()
    rec(drive())
    assert rec.lcp.item() == 0.0


@pytest.mark.parametrize("grad", ["cbptt", "crbp"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_closed_form_value_and_gradient(grad, reduction):
    # J = a I, so 1^T J = a at each of the n state elements: per element (a - tau)^2 with
    # derivative 2 (a - tau); "sum" multiplies both by n, "mean" by 1.
    cell = LinearCell(1.2)
    x = drive()
    n = x.numel() if reduction == "sum" else 1
    rec = Recurrence(cell, 3, grad=grad, lcp_tau=0.9, lcp_reduction=reduction).train()
    rec(x)
    (da,) = torch.autograd.grad(rec.lcp, [cell.a])
    torch.testing.assert_close(rec.lcp.detach(), torch.tensor(0.09 * n, dtype=torch.float64))
    torch.testing.assert_close(da, torch.tensor(0.6 * n, dtype=torch.float64))


def test_default_reduction_is_the_sum():
    rec = Recurrence(LinearCell(1.2), 3, grad="crbp", lcp_tau=0.9).train()
    x = drive()
    rec(x)
    torch.testing.assert_close(
        rec.lcp.detach(), torch.tensor(0.09 * x.numel(), dtype=torch.float64)
    )


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_matches_dense_jacobian_column_sums(reduction):
    cell = small_hgru(norm="GN")
    x = drive(requires_grad=False)
    h = torch.rand_like(x).requires_grad_()
    tau = 0.2
    n = h.numel()
    jac = torch.autograd.functional.jacobian(lambda s: cell(x, s), h.detach()).reshape(n, n)
    per_element = torch.relu(jac.sum(0) - tau).pow(2)
    expected = per_element.sum() if reduction == "sum" else per_element.mean()
    torch.testing.assert_close(lcp_penalty(cell(x, h), h, tau, reduction), expected)


def _authors_penalty(cell, x, h_prev, tau, xi):
    """The authors' panoptic code, restated from its description: XI * sum((J^T 1 - tau)^+)^2,
    with J^T 1 taken here from the dense Jacobian (not a vector-Jacobian product)."""
    n = h_prev.numel()
    jac = torch.autograd.functional.jacobian(
        lambda s: cell(x, s), h_prev, create_graph=True
    ).reshape(n, n)
    return xi * ((jac.sum(0) - tau).clamp(min=0) ** 2).sum()


def test_weighted_default_penalty_equals_authors_penalty_and_its_gradient():
    """0.001 x our default (sum) penalty is the authors' XI = 1e-3 penalty: same value, same
    gradient for every parameter and for the input x (factor 1)."""
    cell = small_hgru(norm="GN", timesteps=20)  # slow gates: column sums above tau
    x = drive()
    rec = Recurrence(cell, 4, grad="crbp", neumann_steps=2, lcp_tau=0.5).train()
    rec(x)
    ours = 1e-3 * rec.lcp
    with torch.no_grad():
        h_prev = torch.zeros_like(x)
        for _ in range(3):  # the state the last step starts from
            h_prev = cell(x, h_prev)
    theirs = _authors_penalty(cell, x, h_prev, 0.5, 1e-3)
    assert theirs.item() > 0
    torch.testing.assert_close(ours, theirs)
    inputs = [x, *cell.parameters()]
    for a, b in zip(torch.autograd.grad(ours, inputs), torch.autograd.grad(theirs, inputs)):
        torch.testing.assert_close(a, b)


def test_unknown_reduction_names_the_choices():
    with pytest.raises(ValueError, match="lcp_reduction='max'.*'sum', 'mean'"):
        Recurrence(LinearCell(0.5), 3, lcp_reduction="max")


def test_positive_with_gradients_when_not_contractive_enough():
    cell = small_hgru(norm="GN", timesteps=20)  # slow gates: column sums near 1
    rec = Recurrence(cell, 10, grad="crbp", lcp_tau=0.5).train()
    rec(drive())
    assert rec.lcp.item() > 0
    grads = torch.autograd.grad(rec.lcp, list(cell.parameters()), allow_unused=True)
    assert sum(g.abs().sum().item() for g in grads if g is not None) > 0
    assert grads[[n for n, _ in cell.named_parameters()].index("mix_bias")].abs().sum() > 0


def test_sgd_on_lcp_alone_shrinks_spectral_radius():
    torch.manual_seed(0)
    cell = small_hgru(channels=8, norm="GN", timesteps=20, dtype=torch.float32)
    x = torch.randn(2, 8, 8, 8)
    rec = Recurrence(cell, 10, grad="crbp", lcp_tau=0.5).train()

    def radius():
        with torch.no_grad():
            h = rec.eval()(x)
        rec.train()
        return spectral_radius(cell, x, h, iters=40).max().item()

    before = radius()
    opt = torch.optim.SGD(cell.parameters(), lr=10.0)
    for _ in range(20):
        opt.zero_grad()
        rec(x)
        rec.lcp.backward()
        opt.step()
    after = radius()
    assert after < before - 0.05, (before, after)


# The power vector (lcp_vector="power"): the penalty bounds the spectral radius, which the
# ones-vector misses when columns cancel. A = [[2, -3], [-1.5, 2.5]]: column sums 0.5 and -0.5,
# eigenvalues (4.5 +- sqrt(18.25)) / 2 = 4.386 and 0.114.
BLIND = [[2.0, -3.0], [-1.5, 2.5]]
RHO = (4.5 + 18.25**0.5) / 2


def _left_eigenvector(matrix):
    values, vectors = torch.linalg.eig(torch.as_tensor(matrix, dtype=torch.float64).T)
    v = vectors[:, values.abs().argmax()].real
    return v / v.norm()


@pytest.mark.parametrize("grad", ["cbptt", "crbp"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_power_vector_penalty_is_the_spectral_radius_closed_form(grad, reduction):
    from _cells import MatrixCell

    cell = MatrixCell(BLIND)
    x = drive((3, 2, 1, 1))
    samples = 3 if reduction == "sum" else 1
    ones = Recurrence(cell, 2, grad=grad, lcp_tau=0.9, lcp_reduction=reduction).train()
    ones(x)
    assert ones.lcp.item() == 0.0  # every column sum is below tau: the ones-vector sees nothing
    rec = Recurrence(
        cell, 2, grad=grad, lcp_tau=0.9, lcp_reduction=reduction, lcp_vector="power",
        lcp_power_iters=30,
    )  # fmt: skip
    rec.train()(x)
    expected = samples * (RHO - 0.9) ** 2
    torch.testing.assert_close(rec.lcp.detach(), torch.tensor(expected, dtype=torch.float64))
    # d/dA relu(||v A|| - tau)^2 with v the unit left eigenvector (v A = rho v) held constant:
    # 2 (rho - tau) v v^T per sample.
    (grad_a,) = torch.autograd.grad(rec.lcp, [cell.matrix])
    v = _left_eigenvector(BLIND)
    torch.testing.assert_close(grad_a, samples * 2 * (RHO - 0.9) * torch.outer(v, v))


def test_power_penalty_in_an_hgru_equals_the_dense_jacobian_product():
    from rpanoptic.recurrence import power_lcp, power_vector

    cell = small_hgru(norm="GN", timesteps=20)
    x = drive(requires_grad=False)
    h = torch.rand_like(x).requires_grad_()
    out = cell(x, h)
    v = power_vector(out, h, iters=7)
    assert torch.allclose(v.flatten(1).norm(dim=1), torch.ones(2, dtype=torch.float64))
    n = h[0].numel()
    tau = 0.01
    expected = []
    for b in range(2):  # GN: each sample's Jacobian is its own block
        jac = torch.autograd.functional.jacobian(lambda s: cell(x[b : b + 1], s), h[b : b + 1])
        u = v[b].reshape(1, n) @ jac.detach().reshape(n, n)
        expected.append(torch.relu(u.norm() - tau) ** 2)
    torch.testing.assert_close(power_lcp(out, h, v, tau, "sum"), sum(expected))
    torch.testing.assert_close(
        lcp_penalty(cell(x, h), h, tau, "mean", vector="power", power_iters=7),
        sum(expected) / 2,
    )


def test_sgd_on_power_lcp_contracts_a_cell_the_ones_vector_cannot_see():
    from _cells import MatrixCell

    x = drive((2, 2, 1, 1))
    radii = {}
    for vector in ("ones", "power"):
        cell = MatrixCell(BLIND)
        rec = Recurrence(cell, 2, grad="crbp", lcp_tau=0.9, lcp_vector=vector).train()
        opt = torch.optim.SGD(cell.parameters(), lr=0.02)
        for _ in range(300):
            opt.zero_grad()
            rec(x)
            if rec.lcp.requires_grad:
                rec.lcp.backward()
            opt.step()
        radii[vector] = torch.linalg.eigvals(cell.matrix.detach()).abs().max().item()
    assert radii["ones"] == pytest.approx(RHO)  # no gradient: the matrix never moved
    assert radii["power"] < 0.95, radii


def test_bad_lcp_vector_settings_are_named():
    with pytest.raises(ValueError, match="lcp_vector='abs'.*'ones', 'power'"):
        Recurrence(LinearCell(0.5), 3, lcp_vector="abs")
    with pytest.raises(ValueError, match="lcp_power_iters"):
        Recurrence(LinearCell(0.5), 3, lcp_vector="power", lcp_power_iters=0)

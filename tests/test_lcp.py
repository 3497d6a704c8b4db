"""The Lipschitz coefficient penalty: exact values, gradients, and that it makes cells contract."""

import torch
from _cells import LinearCell, drive, small_hgru

from rpanoptic.recurrence import Recurrence, lcp_penalty, spectral_radius


def test_zero_for_strongly_contractive_cell():
    cell = LinearCell(0.3)
    rec = Recurrence(cell, 5, grad="crbp", lcp_tau=0.9).train()
    rec(drive())
    assert rec.lcp.item() == 0.0


def test_closed_form_value_and_gradient():
    # J = a I, so 1^T J = a everywhere: LCP = (a - tau)^2 and dLCP/da = 2 (a - tau).
    for grad in ("cbptt", "crbp"):
        cell = LinearCell(1.2)
        rec = Recurrence(cell, 3, grad=grad, lcp_tau=0.9).train()
        rec(drive())
        (da,) = torch.autograd.grad(rec.lcp, [cell.a])
        torch.testing.assert_close(rec.lcp.detach(), torch.tensor(0.09, dtype=torch.float64))
        torch.testing.assert_close(da, torch.tensor(0.6, dtype=torch.float64))


def test_matches_dense_jacobian_column_sums():
    cell = small_hgru(norm="GN")
    x = drive(requires_grad=False)
    h = torch.rand_like(x).requires_grad_()
    tau = 0.2
    n = h.numel()
    jac = torch.autograd.functional.jacobian(lambda s: cell(x, s), h.detach()).reshape(n, n)
    expected = torch.relu(jac.sum(0) - tau).pow(2).mean()
    torch.testing.assert_close(lcp_penalty(cell(x, h), h, tau), expected)


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

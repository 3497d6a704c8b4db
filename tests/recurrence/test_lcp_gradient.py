"""The penalty's gradient by a forward-mode product ("jvp"): the same gradient as the double
backward, exactly (float64), and no convolution whose kernel is a feature map."""

import warnings

import pytest
import torch
from _cells import LinearCell, drive, small_hgru
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from rpanoptic.recurrence import HGRUCell, Recurrence
from rpanoptic.recurrence.lcp import (
    _FALLBACK_WARNED,
    forward_mode_unsupported,
    jvp_surrogate,
    lcp_penalty,
    penalty_and_direction,
)


def _gradients(cell, x, grad, lcp_gradient, **kw):
    rec = Recurrence(cell, 4, grad=grad, neumann_steps=6, lcp_gradient=lcp_gradient, **kw)
    rec.train()
    x_in = x.detach().requires_grad_()
    h = rec(x_in)
    weight = drive(h.shape, seed=7, requires_grad=False)
    loss = (h * weight).sum() + 5.0 * rec.lcp
    return rec.lcp.detach(), torch.autograd.grad(loss, [x_in, *cell.parameters()])


@pytest.mark.parametrize("grad", ["cbptt", "crbp"])
@pytest.mark.parametrize("vector", ["ones", "power"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("norm", ["GN", "BN", ""])
def test_jvp_gradient_equals_double_backward(grad, vector, reduction, norm):
    x = drive((2, 4, 5, 5))
    kw = dict(lcp_tau=0.05, lcp_vector=vector, lcp_reduction=reduction, lcp_power_iters=3)
    results = {}
    for lcp_gradient in ("jvp", "double_backward"):
        cell = small_hgru(4, norm=norm, nonlinearity="softplus")
        results[lcp_gradient] = _gradients(cell, x, grad, lcp_gradient, **kw)
        if norm == "BN":  # the extra forward-mode step must not move the running statistics
            results[lcp_gradient] += (cell.norms[0].running_mean.clone(),)
    (value, got, *stats), (ref_value, ref, *ref_stats) = results["jvp"], results["double_backward"]
    assert ref_value.item() > 0  # the penalty is active, so its gradient is tested
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=0)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(stats, ref_stats):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_jvp_gradient_other_nonlinearities(nonlinearity):
    x = drive((2, 4, 5, 5))
    out = {}
    for lcp_gradient in ("jvp", "double_backward"):
        cell = small_hgru(4, norm="GN", nonlinearity=nonlinearity)
        out[lcp_gradient] = _gradients(cell, x, "crbp", lcp_gradient, lcp_tau=0.05)[1]
    for a, b in zip(out["jvp"], out["double_backward"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("vector", ["ones", "power"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_direction_is_the_penalty_gradient_with_respect_to_the_product(vector, reduction):
    u = drive((3, 2, 4, 4), seed=3, requires_grad=True)
    value, w = penalty_and_direction(u, 0.4, reduction, vector)
    if vector == "power":
        norms = u.reshape(3, -1).norm(dim=1)
        penalty = torch.relu(norms - 0.4).pow(2)
    else:
        penalty = torch.relu(u - 0.4).pow(2)
    penalty = penalty.sum() if reduction == "sum" else penalty.mean()
    (expected,) = torch.autograd.grad(penalty, u)
    assert value.item() > 0
    torch.testing.assert_close(value, penalty.detach())
    torch.testing.assert_close(w, expected)


def test_surrogate_is_v_J_w_of_a_linear_cell():
    # J = a I: <v, J w> = a <v, w>, and its derivative with respect to a is <v, w>.
    cell = LinearCell(0.7)
    x, h = drive(), drive(seed=2)
    v, w = drive(seed=3, requires_grad=False), drive(seed=4, requires_grad=False)
    s = jvp_surrogate(lambda state: cell(x, state), h, v, w)
    torch.testing.assert_close(s, 0.7 * (v * w).sum(), check_dtype=False)
    (da,) = torch.autograd.grad(s, cell.a)
    torch.testing.assert_close(da, (v * w).sum())


class _ConvRecorder(TorchDispatchMode):
    """The weight shapes of every convolution (forward and backward) dispatched inside."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            self.weights.append(tuple(args[1].shape))
        elif func is torch.ops.aten.convolution_backward.default:
            self.weights.append(tuple(args[2].shape))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("vector", ["ones", "power"])
def test_crbp_step_convolves_only_with_the_cells_weights(vector):
    """A training step of C-RBP (forward, loss + penalty, backward) dispatches no convolution
    whose weight is a feature map; the double backward, for contrast, does."""
    size = 12
    found = {}
    for lcp_gradient in ("jvp", "double_backward"):
        torch.manual_seed(0)
        cell = HGRUCell(8, 3, gn_groups=4)
        rec = Recurrence(cell, 4, "crbp", lcp_tau=0.1, lcp_vector=vector, lcp_gradient=lcp_gradient)
        rec.train()
        x = torch.randn(2, 8, size, size, requires_grad=True)
        recorder = _ConvRecorder()
        with recorder:
            h = rec(x)
            ((h**2).mean() + rec.lcp).backward()
        found[lcp_gradient] = set(recorder.weights)
    kernels = (cell.gain_gate.weight, cell.mix_gate.weight, cell.w_inh, cell.w_exc)
    allowed = {tuple(k.shape) for k in kernels}
    assert found["jvp"] == allowed  # every kernel is the cell's own, and each is used
    assert any(shape[-1] == size for shape in found["double_backward"])


class _NoJvpTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


class _CellWithoutJvp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))

    def forward(self, x, h):
        return _NoJvpTanh.apply(self.a * h + x)


def test_cell_without_forward_mode_falls_back_with_a_warning():
    x = drive()
    _FALLBACK_WARNED.clear()
    with pytest.warns(RuntimeWarning, match="double_backward"):
        got = _gradients(_CellWithoutJvp(), x, "crbp", "jvp", lcp_tau=0.1)
    ref = _gradients(_CellWithoutJvp(), x, "crbp", "double_backward", lcp_tau=0.1)
    assert ref[0].item() > 0
    for a, b in zip(got[1], ref[1]):
        torch.testing.assert_close(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not at every step
        _gradients(_CellWithoutJvp(), x, "crbp", "jvp", lcp_tau=0.1)


def test_errors_of_the_computation_itself_are_not_taken_for_missing_formulas():
    assert forward_mode_unsupported(NotImplementedError("no jvp"))
    assert forward_mode_unsupported(RuntimeError("Trying to use forward AD with foo"))
    assert not forward_mode_unsupported(RuntimeError("CUDA out of memory"))

    def broken(state):
        raise RuntimeError("shape mismatch in the cell")

    h = drive()
    with pytest.raises(RuntimeError, match="shape mismatch"):
        lcp_penalty(h * 2, h, 0.1, step=broken)


def test_bad_lcp_gradient_is_named():
    with pytest.raises(ValueError, match=r"lcp_gradient.*'jvp'.*'double_backward'"):
        Recurrence(LinearCell(0.5), 3, lcp_gradient="forward")

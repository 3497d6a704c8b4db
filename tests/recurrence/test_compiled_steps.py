"""Recurrence(compile_steps=True): the graph-free steps through torch.compile give the eager
values and gradients, a failed compilation falls back to eager with one warning naming the
layer, copies and state dicts are unchanged, and a bad value is refused by name."""

import copy
import warnings

import pytest
import torch

from rpanoptic.recurrence import HGRUCell, Recurrence


def _pair(grad="crbp", timesteps=5, **kw):
    torch.manual_seed(0)
    eager = Recurrence(HGRUCell(8, norm="GN", gn_groups=4), timesteps, grad=grad, name="eager")
    compiled = Recurrence(
        copy.deepcopy(eager.cell), timesteps, grad=grad, compile_steps=True, name="p3", **kw
    )
    return eager, compiled


def _train_step(rec, x):
    x = x.clone().requires_grad_()
    h = rec.train()(x)
    (h.pow(2).sum() + rec.lcp).backward()
    return h.detach(), x.grad, [p.grad for p in rec.cell.parameters()]


@pytest.mark.slow
def test_compiled_steps_give_the_eager_values_and_gradients():
    eager, compiled = _pair(halt_tol=1e-3)
    x = torch.randn(2, 8, 6, 6)
    h_e, gx_e, gp_e = _train_step(eager, x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h_c, gx_c, gp_c = _train_step(compiled, x)
    if compiled._compiled_step.failed:  # no working compiler here: the fallback ran instead
        assert any("torch.compile" in str(w.message) for w in caught)
    torch.testing.assert_close(h_c, h_e, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gx_c, gx_e, rtol=1e-4, atol=1e-5)
    for a, b in zip(gp_c, gp_e):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    eager.halt_tol = 1e-3  # inference with halting: same states and same steps per sample
    with torch.no_grad():
        out_e, out_c = eager.eval()(x), compiled.eval()(x)
    torch.testing.assert_close(out_c, out_e, rtol=1e-4, atol=1e-5)
    assert compiled.steps.tolist() == eager.steps.tolist()
    if compiled._compiled_step.failed:
        pytest.skip("torch.compile does not work on this machine; the eager fallback matched")
    assert compiled._compiled_step._compiled is not None


def test_a_failed_compilation_warns_once_and_runs_eager(monkeypatch):
    def broken(module):
        raise RuntimeError("no C++ compiler found\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    eager, compiled = _pair()
    x = torch.randn(2, 8, 6, 6)
    with pytest.warns(RuntimeWarning, match=r"'p3'.*torch.compile.*RuntimeError: no C\+\+ compi"):
        h_c, _, gp_c = _train_step(compiled, x)
    h_e, _, gp_e = _train_step(eager, x)
    torch.testing.assert_close(h_c, h_e)
    torch.testing.assert_close(gp_c[0], gp_e[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        _train_step(compiled, x)


def test_copies_and_state_dicts_do_not_carry_compiled_code(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module: calls.append(module) or module)
    eager, compiled = _pair()
    x = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        compiled.eval()(x)
        compiled(x)
    assert calls == [compiled.cell]  # compiled once, the cell itself
    assert list(compiled.state_dict()) == list(eager.state_dict())
    twin = copy.deepcopy(compiled)
    assert twin._compiled_step.cell is twin.cell  # the copy steps its own cell
    assert twin._compiled_step._compiled is None
    _train_step(twin, x)
    assert calls[-1] is twin.cell and len(calls) == 2


def test_compile_steps_must_be_a_bool():
    with pytest.raises(ValueError, match=r"compile_steps='yes' is invalid; allowed: True or False"):
        Recurrence(HGRUCell(8, gn_groups=4), 3, compile_steps="yes")
    with pytest.raises(ValueError, match=r"compile_steps=1 is invalid"):
        Recurrence(HGRUCell(8, gn_groups=4), 3, compile_steps=1)

"""Recurrence: modes agree in the forward pass, inference, halting, diagnostics, argument errors."""

import pytest
import torch
from _cells import LinearCell, drive, small_hgru

from rpanoptic.recurrence import GRAD_MODES, HGRUCell, Recurrence, sweep
from rpanoptic.recurrence.memory import HostSyncCounter


def test_all_modes_give_the_same_forward_output():
    cell = HGRUCell(8, norm="GN", gn_groups=4)
    x = torch.randn(2, 8, 10, 10)
    outs = {}
    for grad in GRAD_MODES:
        rec = Recurrence(cell, 7, grad=grad).train()
        outs[grad] = rec(x.clone().requires_grad_())
        assert (rec.lcp is not None) == (grad in ("cbptt", "crbp"))
        assert rec.steps.tolist() == [7, 7]
    with torch.no_grad():
        outs["eval"] = Recurrence(cell, 7).eval()(x)
    for grad, out in outs.items():
        torch.testing.assert_close(out, outs["bptt"], rtol=1e-6, atol=1e-6, msg=grad)


def test_batchnorm_statistics_updated_once_per_step_in_every_mode():
    x = torch.randn(4, 8, 6, 6)
    stats = {}
    for grad in GRAD_MODES:
        torch.manual_seed(0)
        cell = HGRUCell(8, norm="BN")
        rec = Recurrence(cell, 5, grad=grad).train()
        h = rec(x.clone().requires_grad_())
        (h.sum() + (rec.lcp if rec.lcp is not None else 0)).backward()
        stats[grad] = torch.cat([b.float().flatten() for b in cell.buffers()])
    for grad in GRAD_MODES:  # the recomputation in backward leaves the statistics alone
        torch.testing.assert_close(stats[grad], stats["bptt"], msg=grad)


def test_inference_builds_no_graph_and_uses_test_timesteps():
    cell = LinearCell(0.5)
    x = drive()
    rec = Recurrence(cell, 3, grad="crbp", test_timesteps=6).eval()
    h = rec(x)
    assert not h.requires_grad and rec.lcp is None
    assert rec.steps.tolist() == [6, 6]
    torch.testing.assert_close(h, x.detach() * sum(0.5**k for k in range(6)))


def test_halting_is_per_sample_and_stops_early_on_easy_inputs():
    cell = LinearCell(0.5)
    x = drive()
    x.data[1] = 0.0  # an easy sample: already at its fixed point h* = 0
    rec = Recurrence(cell, 5, test_timesteps=100, halt_tol=1e-3).eval()
    h = rec(x)
    steps = rec.steps.tolist()
    # sample 0: change after step t is 0.5^(t-1) relative; sample 1 never moves.
    assert steps[1] == 1 and 5 < steps[0] < 100
    assert torch.all(h[1] == 0)
    full = Recurrence(cell, 5, test_timesteps=100).eval()(x)
    assert torch.allclose(h[0], full[0], rtol=1e-2)
    assert full.shape == h.shape


def test_halting_freezes_a_stopped_sample():
    cell = LinearCell(0.9)
    x = drive()
    x.data[0] *= 1e-3
    rec = Recurrence(cell, 1, test_timesteps=50, halt_tol=0.05).eval()
    h = rec(x)
    s0, s1 = rec.steps.tolist()
    expected0 = x.detach()[0] * sum(0.9**k for k in range(s0))
    torch.testing.assert_close(h[0], expected0)
    assert s0 == s1  # relative change does not depend on the input's scale


def test_diagnostics_are_tensors_on_the_state():
    cell = small_hgru(norm="GN")
    rec = Recurrence(cell, 40, grad="crbp", neumann_steps=5).train()
    x = drive()
    with rec.recording() as record:
        rec(x).sum().backward()
        d = rec.diagnostics(power_iters=10)
        assert torch.equal(record.input, x.detach()) and record.state.shape == x.shape
    assert rec._record is None  # dropped on exit
    assert set(d) == {"residual", "spectral_radius", "neumann_fallbacks", "neumann_terms", "steps"}
    assert all(isinstance(v, torch.Tensor) for v in d.values())
    assert d["residual"].shape == (2,) and torch.all(d["residual"] < 1e-3)
    assert torch.all(d["spectral_radius"] < 1)
    assert d["neumann_fallbacks"].item() == 0 and d["neumann_terms"].item() == 5
    rec.reset_neumann_stats()
    assert rec.diagnostics(record.input, record.state)["neumann_terms"].item() == 0


def test_diagnostics_without_state_says_what_to_do():
    with pytest.raises(ValueError, match="recording"):
        Recurrence(LinearCell(0.5), 2).diagnostics()


def test_autocast_keeps_recurrence_in_float32():
    cell = HGRUCell(8, norm="GN", gn_groups=4)
    x = torch.randn(1, 8, 6, 6)
    for grad in GRAD_MODES:
        rec = Recurrence(cell, 3, grad=grad).train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = rec(x.bfloat16().requires_grad_())
            loss = h.sum() + (rec.lcp if rec.lcp is not None else 0)
        assert h.dtype == torch.float32, grad
        loss.backward()
        with torch.no_grad():
            ref = Recurrence(cell, 3).eval()(x.bfloat16().float())
        torch.testing.assert_close(h, ref, msg=grad)


@pytest.mark.parametrize("solver", ["neumann", "gmres"])
@pytest.mark.parametrize("rtol", [0.0, 1e-4])
@pytest.mark.parametrize("norm", ["GN", "BN"])
def test_no_host_synchronisation_in_rbp_backward(norm, rtol, solver):
    cell = HGRUCell(8, norm=norm, gn_groups=4)
    rec = Recurrence(
        cell, 4, grad="crbp", neumann_steps=20, neumann_rtol=rtol, backward_solver=solver
    ).train()
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    h = rec(x)
    loss = h.square().mean() + rec.lcp
    with HostSyncCounter() as counter:
        loss.backward()
    assert counter.count == 0
    with HostSyncCounter() as counter:  # the counter does see synchronisations
        bool(x.sum() > 0)
    assert counter.count == 1


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(grad="tbptt"), r"grad='tbptt'.*'bptt', 'cbptt', 'rbp', 'crbp'"),
        (dict(timesteps=0), r"timesteps=0.*an integer >= 1"),
        (dict(timesteps=2.5), r"timesteps=2.5"),
        (dict(neumann_steps=-1), r"neumann_steps=-1.*an integer >= 0"),
        (dict(backward_solver="cg"), r"backward_solver='cg'.*'neumann', 'gmres'"),
        (dict(lcp_tau=0.0), r"lcp_tau=0.0.*0 < value < 1"),
        (dict(lcp_tau=1.0), r"lcp_tau=1.0.*0 < value < 1"),
        (dict(lcp_tau=-1), r"lcp_tau=-1"),
        (dict(test_timesteps=-2), r"test_timesteps=-2"),
        (dict(halt_tol=-0.1), r"halt_tol=-0.1"),
        (dict(neumann_rtol=1.5), r"neumann_rtol=1.5"),
        (dict(check_finite=1), r"check_finite=1.*True or False"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, pattern):
    args = dict(timesteps=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        Recurrence(LinearCell(0.5), **args)


def test_options_after_grad_are_keyword_only():
    """Recurrence(cell, timesteps, grad, *, ...) and HGRUCell(channels, kernel_size, norm,
    nonlinearity, *, ...): a positional option is a TypeError, the public keyword forms work."""
    import inspect

    cell = LinearCell(0.5)
    with pytest.raises(TypeError, match="positional"):
        Recurrence(cell, 3, "crbp", 15)
    rec = Recurrence(
        cell, 3, grad="crbp", neumann_steps=15, lcp_tau=0.9, test_timesteps=0, halt_tol=0.0
    )
    assert (rec.grad, rec.neumann_steps, rec.lcp_tau, rec.halt_tol) == ("crbp", 15, 0.9, 0.0)
    assert Recurrence(cell, 3, "rbp").grad == "rbp"
    hgru = HGRUCell(8, 3, "GN", "softplus", gn_groups=4)
    assert hgru.channels == 8 and hgru.w_inh.shape[-1] == 3
    with pytest.raises(TypeError, match="positional"):
        HGRUCell(8, 3, "GN", "softplus", 8)
    for owner, positional in (
        (Recurrence, ["cell", "timesteps", "grad"]),
        (HGRUCell, ["channels", "kernel_size", "norm", "nonlinearity"]),
    ):
        params = inspect.signature(owner).parameters.values()
        assert [p.name for p in params if p.kind != p.KEYWORD_ONLY] == positional, owner


def test_rbp_gradient_reaches_input_and_parameters_only():
    cell = small_hgru()
    rec = Recurrence(cell, 5, grad="rbp").train()
    x = drive()
    h0 = torch.rand_like(x).requires_grad_()
    rec(x, h0).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert h0.grad is None  # the fixed point does not depend on the start state
    assert all(p.grad is not None for p in cell.parameters())


def test_sweep_mode_runs_once_and_matches_separate_runs():
    cell = small_hgru(norm="GN")
    rec = Recurrence(cell, 3, halt_tol=0.0).eval()
    x = drive(requires_grad=False)
    calls = []
    handle = cell.register_forward_hook(lambda *a: calls.append(1))
    swept = {}
    with sweep(rec, [2, 5, 9]) as set_count:
        for t in (2, 5, 9):
            set_count(t)
            swept[t] = rec(x)
            assert rec.steps.tolist() == [t, t]
        with pytest.raises(ValueError, match="count 4 is not one of"):
            set_count(4)
    assert len(calls) == 9
    handle.remove()
    for t, h in swept.items():
        with rec.using(test_timesteps=t):
            assert torch.equal(rec(x), h)
    with pytest.raises(ValueError, match="counts must be integers >= 1"):
        with sweep(rec, [0, 2]):
            pass


def test_sweep_mode_with_halting_repeats_the_halted_state():
    cell = LinearCell(0.5)
    x = drive(requires_grad=False)
    x[1] = 0.0
    rec = Recurrence(cell, 1, halt_tol=1e-3).eval()
    with sweep(rec, [1, 50]):  # the largest count is selected on entry
        h50 = rec(x)
    with rec.using(test_timesteps=50):
        assert torch.equal(rec(x), h50)


def test_using_changes_settings_for_the_block_only():
    rec = Recurrence(LinearCell(0.5), 4, grad="crbp", test_timesteps=2).eval()
    x = drive(requires_grad=False)
    with rec.using(grad="bptt", test_timesteps=7, lcp_collected=True):
        assert (rec.grad, rec.test_timesteps, rec.lcp_collected) == ("bptt", 7, True)
        rec(x)
        assert rec.steps.tolist() == [7, 7]
    assert (rec.grad, rec.test_timesteps, rec.lcp_collected) == ("crbp", 2, False)
    with pytest.raises(RuntimeError):
        with rec.using(test_timesteps=3):
            raise RuntimeError
    assert rec.test_timesteps == 2  # restored on error too
    with pytest.raises(ValueError, match="grad='tbptt'"):
        with rec.using(grad="tbptt"):
            pass
    with pytest.raises(ValueError, match="test_timesteps=-1"):
        with rec.using(test_timesteps=-1):
            pass


@pytest.mark.parametrize("grad", GRAD_MODES)
def test_non_finite_state_names_layer_and_step(grad):
    cell = LinearCell(1e30)
    rec = Recurrence(cell, 6, grad=grad, name="backbone.rfpn.p3.recurrence").train()
    x = drive(dtype=torch.float64)
    # h_1 = x ~ 1e300 is finite, h_2 = 1e30 h_1 + x overflows float64 (max ~1.8e308).
    with torch.no_grad():
        x.mul_(1e300)
    with pytest.raises(FloatingPointError, match=r"'backbone.rfpn.p3.recurrence'.*step 2 of 6"):
        rec(x)
    with pytest.raises(FloatingPointError, match="input x is already non-finite"):
        rec(torch.full_like(x, float("nan")))


@pytest.mark.parametrize("grad", GRAD_MODES)
def test_empty_batch_keeps_every_parameter_in_the_graph(grad):
    cell = HGRUCell(8, norm="GN", gn_groups=4)
    rec = Recurrence(cell, 3, grad=grad).train()
    x = torch.zeros(0, 8, 5, 5, requires_grad=True)
    h = rec(x)
    assert h.shape == x.shape and rec.steps.numel() == 0
    loss = h.sum() + (rec.lcp if rec.lcp is not None else 0)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in cell.parameters())


def test_deferred_finite_checks_synchronise_once_and_name_the_first_diverged_layer():
    from torch import nn

    from rpanoptic.recurrence import deferred_finite_checks
    from rpanoptic.recurrence.memory import HostSyncCounter

    x = drive(dtype=torch.float64, requires_grad=False)
    names = ("a", "b", "c")
    layers = nn.ModuleList(
        [Recurrence(LinearCell(0.5), 4, grad="rbp", name=n).eval() for n in names]
    )
    with HostSyncCounter() as immediate, torch.no_grad():
        for rec in layers:
            rec(x)
    with HostSyncCounter() as deferred, torch.no_grad():
        with deferred_finite_checks(layers):
            for rec in layers:
                rec(x)
    assert immediate.count == 3 and deferred.count == 1
    # b and c diverge; b, the first, is named; nothing raised before the block ended.
    for rec in layers[1:]:
        with torch.no_grad():
            rec.cell.a.fill_(1e30)
    huge = x * 1e300
    outputs = []
    with pytest.raises(FloatingPointError, match=r"'b'.*step 2 of 4"):
        with torch.no_grad(), deferred_finite_checks(layers):
            for rec in layers:
                outputs.append(rec(huge))
    assert len(outputs) == 3
    assert all(rec._finite_queue is None for rec in layers)  # restored

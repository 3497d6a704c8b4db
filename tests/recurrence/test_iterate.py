"""The graph-free iteration at inference (recurrence/iterate.py): Anderson acceleration against
exact fixed points of linear cells, its halting and records against the plain iteration's
rules, and the test_solver / anderson_memory settings of Recurrence and the config."""

import pytest
import torch
from _cells import MatrixCell, small_hgru

from rpanoptic.recurrence import Recurrence
from rpanoptic.recurrence.iterate import _mixing_weights, anderson_iterate, picard_iterate

N = 6


def _contraction(radius=0.95, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(N, N, generator=g, dtype=torch.float64)
    return radius * a / torch.linalg.matrix_norm(a, 2)


def _slow_contraction(radius=0.97, seed=0):
    """A symmetric A with eigenvalues from -0.5 to ``radius``: the plain iteration closes the
    distance by ``radius`` per step."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(N, N, generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.linspace(-0.5, radius, N, dtype=torch.float64)) @ q.T


def _drive(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, N, 1, 1, generator=g, dtype=torch.float64)


def _fixed_point(a, x):
    """h* = (I - A)^-1 x per sample: the exact fixed point of MatrixCell(A)."""
    eye = torch.eye(N, dtype=torch.float64)
    return torch.linalg.solve(eye - a, x.reshape(x.shape[0], N).T).T.reshape(x.shape)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@torch.no_grad()
def test_anderson_with_full_memory_reaches_a_linear_maps_fixed_point_in_dimension_plus_two():
    """On a linear F, Anderson with memory >= the dimension is GMRES: the iterate after N + 1
    evaluations is the fixed point, so the N + 2nd evaluation returns it; the plain iteration
    is still percent-level off."""
    a, x = _contraction(), _drive()
    exact = _fixed_point(a, x)
    cell = MatrixCell(a)
    out, steps, _ = anderson_iterate(cell, x, torch.zeros_like(x), N + 2, 0.0, N, False)
    plain, _, _ = picard_iterate(cell, x, torch.zeros_like(x), N + 2, 0.0, False)
    assert _rel(out, exact) < 1e-6
    assert _rel(plain, exact) > 1e-3
    assert steps.tolist() == [N + 2, N + 2]
    # Coupled (one group for the batch, as under a training-mode BatchNorm): the joint problem
    # has dimension 2N, and memory 2N solves it too.
    out, steps, _ = anderson_iterate(cell, x, torch.zeros_like(x), 2 * N + 2, 0.0, 2 * N, True)
    assert _rel(out, exact) < 1e-6 and steps.tolist() == [2 * N + 2] * 2


@torch.no_grad()
def test_the_first_step_is_the_plain_step_and_records_equal_separate_runs():
    cell = small_hgru(channels=2, norm="")
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    h0 = torch.zeros_like(x)
    one, steps, _ = anderson_iterate(cell, x, h0, 1, 0.0, 3, False)
    assert torch.equal(one, cell(x, h0)) and steps.tolist() == [1, 1, 1]
    _, _, saved = anderson_iterate(cell, x, h0, 6, 0.0, 3, False, record=(2, 4, 6))
    for t in (2, 4, 6):
        alone, steps, _ = anderson_iterate(cell, x, h0, t, 0.0, 3, False)
        assert torch.equal(saved[t][0], alone) and saved[t][1].tolist() == [t] * 3


@torch.no_grad()
def test_each_sample_halts_on_its_own_and_matches_running_alone():
    """Per-sample halting: a zero drive is at its fixed point (h = 0) and stops after one
    evaluation; the others stop when ||F(h) - h|| / ||h|| < tol, each exactly as alone."""
    a = _contraction(0.97)
    x = _drive(3)
    x[1] = 0.0
    cell, tol = MatrixCell(a), 1e-8
    out, steps, _ = anderson_iterate(cell, x, torch.zeros_like(x), 50, tol, 3, False)
    assert steps[1] == 1 and torch.equal(out[1], torch.zeros_like(out[1]))
    assert steps[0] > 1 and steps[2] > 1
    for i in (0, 2):
        alone, steps_alone, _ = anderson_iterate(
            cell, x[i : i + 1], x[i : i + 1] * 0, 50, tol, 3, False
        )
        torch.testing.assert_close(out[i : i + 1], alone, rtol=1e-12, atol=1e-14)
        assert steps_alone.tolist() == [steps[i].item()]
    exact = _fixed_point(a, x)
    assert _rel(out[[0, 2]], exact[[0, 2]]) < 1e-6  # tol 1e-8 at radius 0.97


@torch.no_grad()
def test_anderson_needs_far_fewer_steps_than_the_plain_iteration_to_the_same_tolerance():
    a, x = _slow_contraction(0.97, seed=3), _drive(2, seed=4)
    cell, tol = MatrixCell(a), 1e-6
    exact = _fixed_point(a, x)
    plain, plain_steps, _ = picard_iterate(cell, x, torch.zeros_like(x), 2000, tol, False)
    fast, fast_steps, _ = anderson_iterate(cell, x, torch.zeros_like(x), 2000, tol, 5, False)
    assert _rel(fast, exact) < 1e-4 and _rel(plain, exact) < 1e-4
    assert (fast_steps * 4 < plain_steps).all(), (fast_steps, plain_steps)


def test_a_singular_or_non_finite_mixing_problem_falls_back_to_the_plain_step():
    g = torch.ones(2, 4, dtype=torch.float64)
    dg = torch.zeros(2, 2, 4, dtype=torch.float64)  # nothing changed: all weight zero
    dg[1, 0, 0] = float("nan")
    gram, rhs = torch.bmm(dg, dg.transpose(1, 2)), torch.bmm(dg, g.unsqueeze(2)).squeeze(2)
    gamma = _mixing_weights(gram, rhs)
    assert torch.equal(gamma, torch.zeros(2, 2, dtype=torch.float64))
    dg[0] = torch.eye(2, 4, dtype=torch.float64)  # columns e1, e2: gamma = (1, 1)
    gram, rhs = torch.bmm(dg, dg.transpose(1, 2)), torch.bmm(dg, g.unsqueeze(2)).squeeze(2)
    torch.testing.assert_close(_mixing_weights(gram, rhs)[0], torch.ones(2, dtype=torch.float64))


def test_the_ring_buffer_keeps_the_last_differences_and_their_exact_gram():
    """After more pushes than the memory, the history holds the last ``memory`` differences
    (in some slot order) and the Gram matrix of exactly those."""
    from rpanoptic.recurrence.iterate import _History

    gen = torch.Generator().manual_seed(0)
    fs = [torch.randn(2, 7, generator=gen, dtype=torch.float64) for _ in range(6)]
    gs = [torch.randn(2, 7, generator=gen, dtype=torch.float64) for _ in range(6)]
    hist = _History(gs[0], memory=3)
    for k in range(1, 6):
        hist.push(fs[k], fs[k - 1], gs[k], gs[k - 1])
    last = torch.stack([gs[k] - gs[k - 1] for k in (3, 4, 5)], 1)
    key = lambda d: sorted(d[0].sum(1).tolist())  # noqa: E731  (slot order is the ring's)
    assert key(hist.d_g) == pytest.approx(key(last))
    torch.testing.assert_close(hist.gram, torch.bmm(hist.d_g, hist.d_g.transpose(1, 2)))
    dfs = torch.stack([fs[k] - fs[k - 1] for k in (3, 4, 5)], 1)
    assert key(hist.d_f) == pytest.approx(key(dfs))


def test_recurrence_uses_anderson_at_inference_only():
    a, x = _contraction(), _drive()
    rec = Recurrence(
        MatrixCell(a),
        3,
        grad="crbp",
        test_timesteps=N + 2,
        test_solver="anderson",
        anderson_memory=N,
        neumann_steps=2,
    )
    assert "test_solver='anderson', anderson_memory=6" in repr(rec)
    rec.eval()
    with torch.no_grad():
        h = rec(x)
    assert _rel(h, _fixed_point(a, x)) < 1e-6 and rec.steps.tolist() == [N + 2] * 2
    rec.train()  # training runs the N plain steps C-RBP's gradient is defined at
    trained = rec(x)
    with torch.no_grad():
        plain = x * 0
        for _ in range(3):
            plain = MatrixCell(a)(x, plain)
    torch.testing.assert_close(trained.detach(), plain, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"test_solver": "newton"}, "test_solver='newton'"),
        ({"anderson_memory": 0}, "anderson_memory=0"),
    ],
)
def test_bad_inference_solver_settings_are_named(kwargs, named):
    with pytest.raises(ValueError, match=named):
        Recurrence(MatrixCell(_contraction()), 3, **kwargs)


@pytest.mark.parametrize("key, value", [("TEST_SOLVER", "newton"), ("ANDERSON_MEMORY", 0)])
def test_bad_inference_solver_config_keys_are_named(key, value):
    from detectron2.config import get_cfg

    from rpanoptic import add_rpanoptic_config
    from rpanoptic.modeling.recurrent_config import validate_recurrent_config

    cfg = get_cfg()
    add_rpanoptic_config(cfg)
    cfg.MODEL.RECURRENT[key] = value
    with pytest.raises(ValueError, match=f"MODEL.RECURRENT.{key} = {value!r}"):
        validate_recurrent_config(cfg)

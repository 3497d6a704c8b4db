"""Recurrence.using: inference settings changed for a block give what a recurrence built with
them gives, come back on exit (also after an error), and bad values are named."""

import pytest
import torch
from _cells import drive, small_hgru

from rpanoptic.recurrence import Recurrence


def _pair(**settings):
    """A recurrence with default inference settings and one built with ``settings``, sharing one
    cell."""
    cell = small_hgru(channels=2, timesteps=30)
    plain = Recurrence(cell, 30, grad="crbp").eval()
    built = Recurrence(cell, 30, grad="crbp", **settings).eval()
    return plain, built


@pytest.mark.parametrize(
    "settings",
    [
        dict(halt_tol=0.05),
        dict(test_solver="anderson", anderson_memory=3),
        dict(test_solver="anderson", anderson_memory=2, halt_tol=0.05, test_timesteps=12),
    ],
)
def test_using_inference_settings_equals_building_with_them(settings):
    plain, built = _pair(**settings)
    x = drive(requires_grad=False)
    with torch.no_grad():
        expected = built(x)
        expected_steps = built.steps.clone()
        default = plain(x)
        with plain.using(**settings):
            inside = plain(x)
            inside_steps = plain.steps.clone()
        after = plain(x)
    torch.testing.assert_close(inside, expected, rtol=0, atol=0)
    assert torch.equal(inside_steps, expected_steps)
    torch.testing.assert_close(after, default, rtol=0, atol=0)
    assert (plain.halt_tol, plain.test_solver, plain.anderson_memory) == (0.0, "picard", 5)
    if settings.get("halt_tol"):
        assert int(inside_steps.max()) < settings.get("test_timesteps", 30)


def test_using_restores_settings_after_an_error_and_names_bad_values():
    plain, _ = _pair()
    with pytest.raises(RuntimeError, match="inside"):
        with plain.using(halt_tol=0.1, test_solver="anderson"):
            raise RuntimeError("inside")
    assert (plain.halt_tol, plain.test_solver) == (0.0, "picard")
    with pytest.raises(ValueError, match="test_solver.*'newton'.*picard"):
        with plain.using(test_solver="newton"):
            pass
    with pytest.raises(ValueError, match="halt_tol"):
        with plain.using(halt_tol=-1.0):
            pass
    with pytest.raises(ValueError, match="anderson_memory"):
        with plain.using(anderson_memory=0):
            pass
    assert (plain.halt_tol, plain.test_solver, plain.anderson_memory) == (0.0, "picard", 5)

"""MODEL.RECURRENT and MODEL.HGRU: bad values named with their key and the allowed values (the
engine's own rules), and a diverging recurrence named by its layer."""

import pytest
import torch
from _detectron import RFPN, fake_batch, tiny_cfg

from rpanoptic.modeling import build_model
from rpanoptic.recurrence import HGRUCell, Recurrence

pytestmark = pytest.mark.usefixtures("event_storage")


@pytest.mark.parametrize(
    "key, value, pattern",
    [
        ("MODEL.RECURRENT.GRAD", "tbptt", r"MODEL.RECURRENT.GRAD = 'tbptt'.*'crbp'"),
        ("MODEL.RECURRENT.TIMESTEPS", 0, r"MODEL.RECURRENT.TIMESTEPS = 0.*>= 1"),
        ("MODEL.RECURRENT.NEUMANN_STEPS", -1, r"NEUMANN_STEPS = -1"),
        ("MODEL.RECURRENT.LCP_TAU", 0.0, r"LCP_TAU = 0.0.*0 < value < 1"),
        ("MODEL.RECURRENT.LCP_TAU", 1.0, r"LCP_TAU = 1.0.*0 < value < 1"),
        ("MODEL.RECURRENT.HALT_TOL", -1.0, r"HALT_TOL = -1.0"),
        ("MODEL.RECURRENT.COMPILE", "yes", r"False vs. yes.*MODEL.RECURRENT.COMPILE"),
        ("MODEL.RECURRENT.LCP_VECTOR", "abs", r"LCP_VECTOR = 'abs'.*'ones', 'power'"),
        ("MODEL.RECURRENT.LCP_POWER_ITERS", 0, r"LCP_POWER_ITERS = 0.*>= 1"),
        ("MODEL.RECURRENT.BACKWARD_SOLVER", "cg", r"BACKWARD_SOLVER = 'cg'.*'neumann', 'gmres'"),
        ("MODEL.HGRU.NORM", "LN", r"MODEL.HGRU.NORM = 'LN'.*'GN'"),
        ("MODEL.HGRU.NONLINEARITY", "gelu", r"NONLINEARITY = 'gelu'.*'softplus'"),
        ("MODEL.HGRU.KERNEL_SIZE", 4, r"KERNEL_SIZE = 4.*odd"),
        ("MODEL.HGRU.GN_GROUPS", 5, r"GN_GROUPS = 5.*divisor of 32"),
    ],
)
def test_bad_config_values_name_key_value_and_choices(key, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        build_model(tiny_cfg(RFPN, key, value))


def test_config_keys_are_checked_by_the_engines_own_rules():
    import inspect

    from rpanoptic.modeling.recurrent_config import _ENGINE_KEYS, _RULES
    from rpanoptic.recurrence.hgru import ARGUMENTS as HGRU_ARGUMENTS
    from rpanoptic.recurrence.runner import ARGUMENTS as RECURRENCE_ARGUMENTS

    for key, (rules, argument) in _ENGINE_KEYS.items():
        assert _RULES[key] is rules[argument], key  # one rule object, not a copy
    for owner, rules in ((Recurrence, RECURRENCE_ARGUMENTS), (HGRUCell, HGRU_ARGUMENTS)):
        assert set(rules) <= set(inspect.signature(owner).parameters), owner


def test_divergence_names_layer_and_step():
    model = build_model(tiny_cfg(RFPN)).train()
    cell = model.backbone.rfpn["p4"].recurrence.cell
    with torch.no_grad():
        cell.kappa.fill_(1e38)
        cell.w_exc.mul_(1e30)
    with pytest.raises(FloatingPointError, match=r"backbone.rfpn.p4.recurrence.*step 1 of 3"):
        model(fake_batch(1))


def test_compile_key_reaches_every_recurrent_layer():
    from rpanoptic.modeling.recurrent_config import recurrent_layers

    layers = recurrent_layers(build_model(tiny_cfg(RFPN, "MODEL.RECURRENT.COMPILE", True)))
    assert layers and all(rec.compile_steps for rec in layers.values())
    assert all(rec._compiled_step.name == name for name, rec in layers.items())
    plain = recurrent_layers(build_model(tiny_cfg(RFPN)))
    assert not any(rec.compile_steps for rec in plain.values())


def test_power_lcp_keys_reach_every_recurrent_layer_and_its_loss():
    from rpanoptic.modeling.recurrent_config import recurrent_layers

    cfg = tiny_cfg(RFPN, "MODEL.RECURRENT.LCP_VECTOR", "power")
    cfg.MODEL.RECURRENT.LCP_POWER_ITERS = 3
    model = build_model(cfg).train()
    layers = recurrent_layers(model)
    assert layers and all(
        rec.lcp_vector == "power" and rec.lcp_power_iters == 3 for rec in layers.values()
    )
    model(fake_batch(1))
    assert all(rec.lcp is not None and rec.lcp.requires_grad for rec in layers.values())
    assert all(
        rec.lcp_vector == "ones" for rec in recurrent_layers(build_model(tiny_cfg(RFPN))).values()
    )


def test_anderson_keys_reach_every_recurrent_layer_and_change_only_inference_after_step_one():
    """TEST_SOLVER / ANDERSON_MEMORY reach each layer. At one inference step Anderson is the
    plain step (same backbone features exactly); at N = 3 it mixes, so the features differ;
    training forward is the plain N steps either way."""
    from rpanoptic.modeling.recurrent_config import recurrent_layers

    def backbone(*opts):
        torch.manual_seed(0)  # SCALE_INIT 1: the recurrent state reaches the features
        return build_model(tiny_cfg(RFPN, "MODEL.RFPN.SCALE_INIT", 1.0, *opts)).backbone

    anderson = ["MODEL.RECURRENT.TEST_SOLVER", "anderson", "MODEL.RECURRENT.ANDERSON_MEMORY", 2]
    layers = recurrent_layers(backbone(*anderson))
    assert layers and all(
        rec.test_solver == "anderson" and rec.anderson_memory == 2 for rec in layers.values()
    )
    image = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    one = ["MODEL.RECURRENT.TEST_TIMESTEPS", 1]
    with torch.no_grad():
        fast, plain = backbone(*anderson, *one).eval()(image), backbone(*one).eval()(image)
        assert all(torch.equal(fast[k], plain[k]) for k in plain)
        fast, plain = backbone(*anderson).eval()(image), backbone().eval()(image)
        assert any(not torch.allclose(fast[k], plain[k]) for k in ("p3", "p4", "p5"))
    fast, plain = backbone(*anderson).train()(image), backbone().train()(image)  # with autograd
    assert all(torch.allclose(fast[k], plain[k], rtol=1e-6, atol=1e-7) for k in plain)

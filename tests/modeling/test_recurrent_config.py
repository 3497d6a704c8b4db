"""MODEL.RECURRENT and MODEL.HGRU: bad values named with their key and the allowed values (the
engine's own rules), and a diverging recurrence named by its layer."""

import pytest
import torch
from _detectron import RFPN, RMASK, fake_batch, tiny_cfg

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
        ("MODEL.RECURRENT.LCP_GRADIENT", "fwd", r"LCP_GRADIENT = 'fwd'.*'jvp'"),
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

    from rpanoptic.modeling.recurrent_config import _ARGUMENT_RULES, _ENGINE_KEYS, _RULES
    from rpanoptic.recurrence.hgru import ARGUMENTS as HGRU_ARGUMENTS
    from rpanoptic.recurrence.runner import ARGUMENTS as RECURRENCE_ARGUMENTS

    for key, (owner, argument) in _ENGINE_KEYS.items():
        assert _RULES[key] is _ARGUMENT_RULES[owner][argument], key  # one rule object, not a copy
    for owner, rules in ((Recurrence, RECURRENCE_ARGUMENTS), (HGRUCell, HGRU_ARGUMENTS)):
        assert set(rules) <= set(inspect.signature(owner).parameters), owner


def test_every_engine_argument_maps_to_exactly_one_config_key():
    """Each argument of Recurrence and HGRUCell is set by exactly one key (the few that a key of
    their own does not set are listed, with where they come from, in DERIVED_ARGUMENTS); the
    keys and the rule tables follow the signatures' order."""
    import inspect

    from rpanoptic.modeling.recurrent_config import (
        _ARGUMENT_RULES,
        _ENGINE_KEYS,
        DERIVED_ARGUMENTS,
        config_keys,
    )

    for owner in (Recurrence, HGRUCell):
        signature = list(inspect.signature(owner).parameters)
        keys = {
            arg: [k for k, (o, a) in _ENGINE_KEYS.items() if (o, a) == (owner, arg)]
            for arg in signature
        }
        for arg, found in keys.items():
            derived = f"{owner.__name__}({arg})" in DERIVED_ARGUMENTS
            assert len(found) == (0 if derived else 1), (owner, arg, found)
        in_table = [a for o, a in _ENGINE_KEYS.values() if o is owner]
        assert in_table == [a for a in signature if a in in_table], owner  # signature order
        rules = list(_ARGUMENT_RULES[owner])
        assert rules == [a for a in signature if a in rules], owner
    assert all(f"{o.__name__}({a})" not in DERIVED_ARGUMENTS for o, a in _ENGINE_KEYS.values())
    for key, (owner, arg) in _ENGINE_KEYS.items():
        assert config_keys()[key][1] == f"{owner.__name__}({arg})"


def test_every_engine_key_reaches_its_argument():
    """build_recurrence passes each key's value to its argument: a non-default value of every
    engine key shows up on the built Recurrence / HGRUCell."""
    from rpanoptic.modeling.recurrent_config import _ENGINE_KEYS, build_recurrence

    values = {
        "MODEL.RECURRENT.TIMESTEPS": 4,
        "MODEL.RECURRENT.GRAD": "cbptt",
        "MODEL.RECURRENT.NEUMANN_STEPS": 7,
        "MODEL.RECURRENT.NEUMANN_RTOL": 0.25,
        "MODEL.RECURRENT.BACKWARD_SOLVER": "gmres",
        "MODEL.RECURRENT.LCP_TAU": 0.5,
        "MODEL.RECURRENT.LCP_REDUCTION": "mean",
        "MODEL.RECURRENT.LCP_VECTOR": "power",
        "MODEL.RECURRENT.LCP_POWER_ITERS": 2,
        "MODEL.RECURRENT.LCP_GRADIENT": "double_backward",
        "MODEL.RECURRENT.TEST_TIMESTEPS": 9,
        "MODEL.RECURRENT.HALT_TOL": 0.125,
        "MODEL.RECURRENT.TEST_SOLVER": "anderson",
        "MODEL.RECURRENT.ANDERSON_MEMORY": 3,
        "MODEL.RECURRENT.COMPILE": True,
        "MODEL.RECURRENT.CHECK_FINITE": False,
        "MODEL.HGRU.KERNEL_SIZE": 5,
        "MODEL.HGRU.NORM": "BN",
        "MODEL.HGRU.NONLINEARITY": "tanh",
        "MODEL.HGRU.GN_GROUPS": 4,
    }
    assert set(values) == set(_ENGINE_KEYS)
    opts = [item for pair in values.items() for item in pair]
    rec = build_recurrence(tiny_cfg(RFPN, *opts), 8, name="probe")
    seen = {
        "timesteps": rec.timesteps,
        "grad": rec.grad,
        "neumann_steps": rec.neumann_steps,
        "neumann_rtol": rec.neumann_rtol,
        "backward_solver": rec.backward_solver,
        "lcp_tau": rec.lcp_tau,
        "lcp_reduction": rec.lcp_reduction,
        "lcp_vector": rec.lcp_vector,
        "lcp_power_iters": rec.lcp_power_iters,
        "lcp_gradient": rec.lcp_gradient,
        "test_timesteps": rec.test_timesteps,
        "halt_tol": rec.halt_tol,
        "test_solver": rec.test_solver,
        "anderson_memory": rec.anderson_memory,
        "compile_steps": rec.compile_steps,
        "check_finite": rec.check_finite,
        "kernel_size": rec.cell.w_inh.shape[-1],
        "norm": "BN" if isinstance(rec.cell.norms[0], torch.nn.BatchNorm2d) else "other",
        "nonlinearity": "tanh" if rec.cell.nonlinearity is torch.tanh else "other",
    }
    for key, (_, arg) in _ENGINE_KEYS.items():
        if arg != "gn_groups":  # BN has no groups: checked below with GN
            assert seen[arg] == values[key], (key, arg)
    assert rec.name == "probe"
    gn = build_recurrence(tiny_cfg(RFPN, "MODEL.HGRU.GN_GROUPS", 4), 8).cell.norms[0]
    assert isinstance(gn, torch.nn.GroupNorm) and gn.num_groups == 4


@pytest.mark.parametrize(
    "config, key, value, pattern",
    [
        (RFPN, "MODEL.RECURRENT.GRAD", "bogus", r"MODEL.RECURRENT.GRAD = 'bogus'.*'bptt'.*'crbp'"),
        (RFPN, "MODEL.RECURRENT.LCP_TAU", 1.5, r"MODEL.RECURRENT.LCP_TAU = 1.5.*0 < value < 1"),
        (RFPN, "MODEL.RECURRENT.TIMESTEPS", 0, r"MODEL.RECURRENT.TIMESTEPS = 0.*>= 1"),
        (RFPN, "MODEL.HGRU.NORM", "LN", r"MODEL.HGRU.NORM = 'LN'.*'GN'"),
        (RFPN, "MODEL.RFPN.LEVELS", ["p7"], r"MODEL.RFPN.LEVELS = \['p7'\].*'p7'.*allowed.*'p6'"),
        (RFPN, "MODEL.RFPN.LEVELS", [], r"MODEL.RFPN.LEVELS = \[\].*no recurrent layer"),
        (RFPN, "MODEL.RFPN.SCALE_INIT", "one", r"MODEL.RFPN.SCALE_INIT = 'one'.*a number"),
        (RMASK, "MODEL.RECURRENT.GRAD", "bogus", r"MODEL.RECURRENT.GRAD = 'bogus'.*'crbp'"),
        (RMASK, "MODEL.RECURRENT.HALT_TOL", -1.0, r"MODEL.RECURRENT.HALT_TOL = -1.0.*>= 0"),
    ],
)
def test_detectron2s_own_build_model_names_the_bad_key(config, key, value, pattern):
    """A project that builds the model with detectron2.modeling.build_model (no rpanoptic
    validation first) gets the key, the value and the allowed values from the components."""
    from detectron2.modeling import build_model as d2_build_model

    cfg = tiny_cfg(config)
    node, name = key.rsplit(".", 1)
    parent = cfg
    for part in node.split("."):
        parent = parent[part]
    parent[name] = value  # set directly: yacs would refuse a value of another type
    with pytest.raises(ValueError, match=pattern):
        d2_build_model(cfg)


def test_explicit_arguments_are_named_by_argument():
    """LazyConfig-style construction (no CfgNode) keeps the engine's own errors, which name the
    argument: no config key is involved."""
    from detectron2.config import LazyCall as L
    from detectron2.config import instantiate
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.fpn import LastLevelMaxPool
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    from rpanoptic.modeling import RFPN as RFPNBackbone

    cell = L(HGRUCell)(channels=8, gn_groups=4)
    with pytest.raises(ValueError, match=r"^Recurrence: grad='bogus' is invalid.*'crbp'") as e:
        instantiate(L(Recurrence)(cell=cell, timesteps=2, grad="bogus"))
    assert "MODEL." not in str(e.value)
    with pytest.raises(ValueError, match=r"^HGRUCell: kernel_size=4 is invalid.*odd"):
        instantiate(L(HGRUCell)(channels=8, kernel_size=4, gn_groups=4))
    bottom_up = build_resnet_backbone(tiny_cfg(RFPN), ShapeSpec(channels=3))
    rec = Recurrence(HGRUCell(32, gn_groups=8), timesteps=2)
    with pytest.raises(ValueError, match=r"^RFPN: recurrences names the levels \['p7'\]") as e:
        RFPNBackbone(
            bottom_up=bottom_up,
            in_features=["res2", "res3", "res4", "res5"],
            out_channels=32,
            top_block=LastLevelMaxPool(),
            recurrences={"p7": rec},
        )
    assert "MODEL." not in str(e.value)


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


def test_rfpn_checks_all_levels_with_one_host_synchronisation():
    from rpanoptic.recurrence.memory import HostSyncCounter

    model = build_model(tiny_cfg(RFPN)).eval()
    assert len(model.backbone.rfpn) == 4
    with HostSyncCounter() as syncs, torch.no_grad():
        model.backbone(torch.randn(1, 3, 64, 64))
    assert syncs.count == 1

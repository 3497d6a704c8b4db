"""The recurrent FPN: parameter names kept from the FPN, its levels and p6, and a feed-forward
checkpoint that loads into it and computes the feed-forward model."""

import pytest
import torch
from _detectron import FF, RFPN, RMASK, fake_batch, tiny_cfg
from detectron2.checkpoint import DetectionCheckpointer

from rpanoptic.modeling import build_model

pytestmark = pytest.mark.usefixtures("event_storage")


def test_feedforward_checkpoint_loads_and_model_starts_as_feedforward(tmp_path):
    torch.manual_seed(0)
    ff = build_model(tiny_cfg(FF)).eval()
    DetectionCheckpointer(ff, save_dir=str(tmp_path)).save("ff")
    for config, prefixes in ((RFPN, ("backbone.rfpn.",)), (RMASK, ("roi_heads.mask_head.",))):
        model = build_model(tiny_cfg(config)).eval()
        ckpt = DetectionCheckpointer(model).load(str(tmp_path / "ff.pth"))
        assert ckpt is not None
        incompatible = DetectionCheckpointer(model)._load_model(
            {"model": torch.load(tmp_path / "ff.pth", weights_only=True)["model"]}
        )
        missing = set(incompatible.missing_keys)
        assert missing and all(k.startswith(prefixes) for k in missing), sorted(missing)[:5]
        if config == RFPN:
            assert all(".rfpn." in k for k in missing)
            # Zero-initialised residual scales: the loaded RFPN computes the feed-forward model.
            batch = fake_batch(1)
            with torch.no_grad():
                a, b = ff(batch)[0], model(batch)[0]
            torch.testing.assert_close(a["sem_seg"], b["sem_seg"])
            torch.testing.assert_close(a["panoptic_seg"][0], b["panoptic_seg"][0])


def test_rfpn_parameter_names_keep_fpn_names():
    names = {n for n, _ in build_model(tiny_cfg(RFPN)).named_parameters()}
    assert "backbone.fpn_lateral2.weight" in names and "backbone.fpn_output5.weight" in names
    assert any(n.startswith("backbone.bottom_up.res2") for n in names)
    assert "backbone.rfpn.p3.scale" in names
    assert "backbone.rfpn.p5.recurrence.cell.w_inh" in names


def test_rfpn_levels_and_p6_from_recurrent_p5():
    cfg = tiny_cfg(RFPN, "MODEL.RFPN.LEVELS", ["p3", "p5"], "MODEL.RFPN.SCALE_INIT", 1.0)
    model = build_model(cfg)
    assert set(model.backbone.rfpn) == {"p3", "p5"}
    for level in model.backbone.rfpn.values():
        assert level.scale.shape == (1, 32, 1, 1) and bool((level.scale == 1.0).all())
    x = torch.randn(1, 3, 64, 64)
    out = model.backbone(x)
    plain = super(type(model.backbone), model.backbone).forward(x)
    torch.testing.assert_close(out["p2"], plain["p2"])
    assert not torch.allclose(out["p5"], plain["p5"])
    torch.testing.assert_close(out["p6"], torch.nn.functional.max_pool2d(out["p5"], 1, 2))
    with pytest.raises(ValueError, match=r"MODEL.RFPN.LEVELS.*'p7'.*allowed"):
        build_model(tiny_cfg(RFPN, "MODEL.RFPN.LEVELS", ["p7"]))


def test_contribution_of_the_recurrences_is_measured_against_the_fpn_level():
    from rpanoptic.analysis.contribution import rfpn_contribution

    x = torch.randn(1, 3, 64, 64)
    torch.manual_seed(0)
    zero = build_model(tiny_cfg(RFPN)).eval()  # residual scales start at 0
    rows = rfpn_contribution(zero, [x], counts=(1, 3))
    assert {r["level"] for r in rows} == {"p2", "p3", "p4", "p5"}
    assert all(r["value"] == 0.0 for r in rows)
    one = build_model(tiny_cfg(RFPN, "MODEL.RFPN.SCALE_INIT", 1.0)).eval()
    rows = rfpn_contribution(one, [x], counts=(1, 3))
    level = one.backbone.rfpn["p3"]
    p = super(type(one.backbone), one.backbone).forward(x)["p3"]
    with torch.no_grad(), level.recurrence.using(test_timesteps=3):
        expected = (level.recurrence(p).norm() / p.norm()).item()
    got = next(r for r in rows if (r["level"], r["quantity"], r["part"]) == ("p3", "h_3", "whole"))
    assert got["value"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="not an RFPN"):
        rfpn_contribution(build_model(tiny_cfg(FF)).eval(), [x])


NARROW = ("MODEL.RFPN.LEVELS", ["p3", "p4"], "MODEL.RFPN.WIDTHS", [8, 16])


@pytest.mark.parametrize("placement", ["output", "topdown"])
def test_narrow_and_topdown_levels_start_as_the_feedforward_model(tmp_path, placement):
    """Projections and the top-down placement keep a feed-forward checkpoint exact at the start
    of fine-tuning (zero residual scales)."""
    torch.manual_seed(0)
    ff = build_model(tiny_cfg(FF)).eval()
    DetectionCheckpointer(ff, save_dir=str(tmp_path)).save("ff")
    model = build_model(tiny_cfg(RFPN, *NARROW, "MODEL.RFPN.PLACEMENT", placement)).eval()
    DetectionCheckpointer(model).load(str(tmp_path / "ff.pth"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = ff.backbone(x), model.backbone(x)
    assert set(a) == set(b)
    for level in a:
        torch.testing.assert_close(a[level], b[level], rtol=0, atol=0)


def test_widths_set_each_recurrence_between_projections():
    model = build_model(tiny_cfg(RFPN, *NARROW))
    for level, width in (("p3", 8), ("p4", 16)):
        layer = model.backbone.rfpn[level]
        assert layer.recurrence.cell.channels == width
        assert layer.project_in.weight.shape == (width, 32, 1, 1)
        assert layer.project_out.weight.shape == (32, width, 1, 1)
    wide = build_model(tiny_cfg(RFPN, "MODEL.RFPN.LEVELS", ["p3"]))
    assert wide.backbone.rfpn["p3"].project_in is None  # [] keeps the FPN's width
    assert wide.backbone.rfpn["p3"].recurrence.cell.channels == 32


def test_topdown_recurrence_reaches_the_finer_levels_and_output_does_not():
    x = torch.randn(1, 3, 64, 64)
    outs = {}
    for placement in ("output", "topdown"):
        torch.manual_seed(0)
        cfg = tiny_cfg(
            RFPN, *NARROW, "MODEL.RFPN.SCALE_INIT", 1.0, "MODEL.RFPN.PLACEMENT", placement
        )
        model = build_model(cfg).eval()
        with torch.no_grad():
            outs[placement] = model.backbone(x)
            plain = super(type(model.backbone), model.backbone).forward(x)
        outs[placement + "_plain"] = plain
    out, top = outs["output"], outs["topdown"]
    # Same weights (same seed): the feed-forward parts agree.
    torch.testing.assert_close(outs["output_plain"]["p2"], outs["topdown_plain"]["p2"])
    torch.testing.assert_close(out["p2"], outs["output_plain"]["p2"])  # output: p2 untouched
    assert not torch.allclose(top["p2"], outs["topdown_plain"]["p2"])  # topdown: p2 receives it
    torch.testing.assert_close(top["p5"], outs["topdown_plain"]["p5"])  # above p4: untouched
    assert not torch.allclose(top["p3"], outs["topdown_plain"]["p3"])


def test_topdown_timestep_sweep_matches_separate_runs():
    from rpanoptic.recurrence import sweep

    torch.manual_seed(0)
    cfg = tiny_cfg(RFPN, *NARROW, "MODEL.RFPN.SCALE_INIT", 1.0, "MODEL.RFPN.PLACEMENT", "topdown")
    backbone = build_model(cfg).eval().backbone
    x = torch.randn(1, 3, 64, 64)
    layers = [level.recurrence for level in backbone.rfpn.values()]
    separate = {}
    with torch.no_grad():
        for t in (1, 4):
            with layers[0].using(test_timesteps=t), layers[1].using(test_timesteps=t):
                separate[t] = backbone(x)["p2"]
        swept = {}
        with sweep(backbone, (1, 4)) as set_count:
            for t in (4, 1):
                set_count(t)
                swept[t] = backbone(x)["p2"]
    assert not torch.allclose(separate[1], separate[4])
    for t in (1, 4):
        torch.testing.assert_close(swept[t], separate[t])


@pytest.mark.parametrize(
    "opts, match",
    [
        (("MODEL.RFPN.WIDTHS", [8]), r"MODEL.RFPN.WIDTHS = \[8\] has 1 values for the 4 levels"),
        (("MODEL.RFPN.WIDTHS", [8, 0, 8, 8]), r"MODEL.RFPN.WIDTHS = \[8, 0, 8, 8\].*positive"),
        (("MODEL.RFPN.PLACEMENT", "before"), r"MODEL.RFPN.PLACEMENT = 'before'.*'topdown'"),
        (("MODEL.RFPN.WIDTHS", [12, 8, 8, 8]), r"GN_GROUPS = 8 does not divide.*12 channels"),
        (
            ("MODEL.RFPN.LEVELS", ["p5", "p6"], "MODEL.RFPN.PLACEMENT", "topdown"),
            r"'p6'.*top block.*PLACEMENT",
        ),
    ],
)
def test_bad_width_and_placement_settings_are_named(opts, match):
    from rpanoptic.modeling.recurrent_config import validate_recurrent_config

    with pytest.raises(ValueError, match=match):
        cfg = tiny_cfg(RFPN, *opts)
        validate_recurrent_config(cfg)
        build_model(cfg)

"""The Detectron2 components: registration, shipped configs, building from config and from
arguments, feed-forward checkpoints, RFPN levels, config errors, divergence errors."""

import contextlib

import pytest
import torch
from _detectron import CONFIGS, fake_batch, tiny_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import BACKBONE_REGISTRY, ROI_MASK_HEAD_REGISTRY

import rpanoptic
from rpanoptic.modeling import build_model, recurrent_layers
from rpanoptic.recurrence import HGRUCell, Recurrence


@pytest.fixture(autouse=True)
def _storage():
    from detectron2.utils.events import EventStorage

    with EventStorage(0) as storage:  # detectron2's losses log to an event storage
        yield storage


FF = "configs/COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"
RFPN = "configs/COCO-PanopticSegmentation/panoptic_rfpn_R_50_crbp20_1x.yaml"
RMASK = "configs/COCO-PanopticSegmentation/panoptic_rmask_R_50_crbp20_1x.yaml"


def test_import_registers_public_names():
    assert "build_resnet_rfpn_backbone" in BACKBONE_REGISTRY
    assert "RecurrentMaskRCNNConvUpsampleHead" in ROI_MASK_HEAD_REGISTRY
    assert rpanoptic.Recurrence is Recurrence and rpanoptic.HGRUCell is HGRUCell
    cfg = tiny_cfg()
    assert rpanoptic.add_rpanoptic_config(cfg) is cfg  # idempotent
    assert cfg.MODEL.RECURRENT.TIMESTEPS == 3


def test_shipped_configs_are_covered():
    assert len(CONFIGS) >= 7
    assert any("mask_rcnn" in c for c in CONFIGS)


@pytest.mark.parametrize("config", CONFIGS)
def test_config_trains_one_step_and_infers(config):
    torch.manual_seed(0)
    cfg = tiny_cfg(config)
    model = build_model(cfg)
    layers = recurrent_layers(model)
    assert bool(layers) == ("rfpn" in config or "rmask" in config)
    model.train()
    with contextlib.ExitStack() as collecting:
        for layer in layers.values():
            collecting.enter_context(layer.using(lcp_collected=True))
        batch = fake_batch()
        losses = model(batch)
    if any(layer.constrained for layer in layers.values()):
        losses["loss_lcp"] = sum(layer.lcp for layer in layers.values())
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    for name, layer in layers.items():
        grads = [p.grad for p in layer.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
    model.eval()
    with torch.no_grad():
        out = model(batch[:1])
    key = "panoptic_seg" if "Panoptic" in config else "instances"
    assert key in out[0]


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


@pytest.mark.parametrize(
    "key, value, pattern",
    [
        ("MODEL.RECURRENT.GRAD", "tbptt", r"MODEL.RECURRENT.GRAD = 'tbptt'.*'crbp'"),
        ("MODEL.RECURRENT.TIMESTEPS", 0, r"MODEL.RECURRENT.TIMESTEPS = 0.*>= 1"),
        ("MODEL.RECURRENT.NEUMANN_STEPS", -1, r"NEUMANN_STEPS = -1"),
        ("MODEL.RECURRENT.LCP_TAU", 0.0, r"LCP_TAU = 0.0.*0 < value < 1"),
        ("MODEL.RECURRENT.LCP_TAU", 1.0, r"LCP_TAU = 1.0.*0 < value < 1"),
        ("MODEL.RECURRENT.HALT_TOL", -1.0, r"HALT_TOL = -1.0"),
        ("MODEL.HGRU.NORM", "LN", r"MODEL.HGRU.NORM = 'LN'.*'GN'"),
        ("MODEL.HGRU.NONLINEARITY", "gelu", r"NONLINEARITY = 'gelu'.*'softplus'"),
        ("MODEL.HGRU.KERNEL_SIZE", 4, r"KERNEL_SIZE = 4.*odd"),
        ("MODEL.HGRU.GN_GROUPS", 5, r"GN_GROUPS = 5.*divisor of 32"),
    ],
)
def test_bad_config_values_name_key_value_and_choices(key, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        build_model(tiny_cfg(RFPN, key, value))


def test_registry_miss_says_to_import_rpanoptic():
    saved = BACKBONE_REGISTRY._obj_map.pop("build_resnet_rfpn_backbone")
    try:
        with pytest.raises(KeyError, match="import rpanoptic before build_model"):
            build_model(tiny_cfg(RFPN))
    finally:
        BACKBONE_REGISTRY._obj_map["build_resnet_rfpn_backbone"] = saved


def test_divergence_names_layer_and_step():
    model = build_model(tiny_cfg(RFPN)).train()
    cell = model.backbone.rfpn["p4"].recurrence.cell
    with torch.no_grad():
        cell.kappa.fill_(1e38)
        cell.w_exc.mul_(1e30)
    with pytest.raises(FloatingPointError, match=r"backbone.rfpn.p4.recurrence.*step 1 of 3"):
        model(fake_batch(1))


def test_components_build_from_explicit_arguments():
    """LazyConfig-style construction: no CfgNode, every part passed in."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.fpn import LastLevelMaxPool
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    from rpanoptic.modeling import RFPN, RecurrentMaskRCNNConvUpsampleHead

    cfg = tiny_cfg(FF)
    bottom_up = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    rec = Recurrence(HGRUCell(32, gn_groups=8), timesteps=2, grad="rbp")
    backbone = RFPN(
        bottom_up=bottom_up,
        in_features=["res2", "res3", "res4", "res5"],
        out_channels=32,
        top_block=LastLevelMaxPool(),
        recurrences={"p4": rec},
    )
    out = backbone(torch.randn(1, 3, 64, 64))
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"] and out["p4"].shape[1] == 32
    head = RecurrentMaskRCNNConvUpsampleHead(
        ShapeSpec(channels=16, height=14, width=14),
        num_classes=1,
        conv_dim=32,
        recurrence=Recurrence(HGRUCell(32, gn_groups=8), timesteps=2),
        conv_norm="GN",
    )
    assert head.input_proj is not None  # 16 -> 32 channels
    assert head.layers(torch.randn(3, 16, 14, 14)).shape == (3, 1, 28, 28)

"""The Detectron2 components: registration, every shipped config training a step, and building
from explicit arguments (LazyConfig style)."""

import contextlib

import pytest
import torch
from _detectron import CONFIGS, FF, RFPN, fake_batch, tiny_cfg
from detectron2.modeling import BACKBONE_REGISTRY, ROI_MASK_HEAD_REGISTRY

import rpanoptic
from rpanoptic.modeling import build_model, recurrent_layers
from rpanoptic.recurrence import HGRUCell, Recurrence

pytestmark = pytest.mark.usefixtures("event_storage")


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


def test_registry_miss_says_to_import_rpanoptic():
    saved = BACKBONE_REGISTRY._obj_map.pop("build_resnet_rfpn_backbone")
    try:
        with pytest.raises(KeyError, match="import rpanoptic before build_model"):
            build_model(tiny_cfg(RFPN))
    finally:
        BACKBONE_REGISTRY._obj_map["build_resnet_rfpn_backbone"] = saved


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

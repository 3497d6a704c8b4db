"""Configs: the restated bases match detectron2's model zoo; every config loads with our keys."""

import os
import re

import pytest
from _detectron import CONFIGS, ROOT
from detectron2 import model_zoo
from detectron2.config import get_cfg

import rpanoptic
from rpanoptic.engine.setup import get_rpanoptic_cfg


def _zoo(name):
    cfg = get_cfg()
    rpanoptic.add_rpanoptic_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(name))
    return cfg


@pytest.mark.parametrize(
    "ours, zoo",
    [
        ("configs/Base-RCNN-FPN.yaml", "Base-RCNN-FPN.yaml"),
        (
            "configs/Base-RPanoptic-FPN.yaml",
            "COCO-PanopticSegmentation/Base-Panoptic-FPN.yaml",
        ),
        (
            "configs/COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
            "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
        ),
    ],
)
def test_restated_bases_match_model_zoo(ours, zoo):
    mine = get_rpanoptic_cfg(os.path.join(ROOT, ours))
    mine.MODEL.DEVICE = "cuda"  # the fallback to CPU is not part of the file
    assert mine == _zoo(zoo)


@pytest.mark.parametrize("config", CONFIGS)
def test_configs_are_short_and_clean(config):
    with open(os.path.join(ROOT, config)) as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    assert len(lines) <= 16
    text = "\n".join(lines)
    assert "OUTPUT_DIR" not in text and "/home/" not in text and "/work/" not in text
    assert not re.search(r"^\s*#\s*[A-Z_]+:", text, re.M), "commented-out config block"


def test_recurrent_configs_set_mode_and_steps():
    expected = {
        "panoptic_rfpn_R_50_crbp20_1x": ("crbp", 20, "build_resnet_rfpn_backbone"),
        "panoptic_rfpn_R_50_bptt3_1x": ("bptt", 3, "build_resnet_rfpn_backbone"),
        "panoptic_rfpn_R_50_rbp20_1x": ("rbp", 20, "build_resnet_rfpn_backbone"),
        "panoptic_rfpn_R_101_crbp20_3x": ("crbp", 20, "build_resnet_rfpn_backbone"),
        "panoptic_rmask_R_50_crbp20_1x": ("crbp", 20, "build_resnet_fpn_backbone"),
    }
    for name, (grad, steps, backbone) in expected.items():
        cfg = get_rpanoptic_cfg(
            os.path.join(ROOT, f"configs/COCO-PanopticSegmentation/{name}.yaml")
        )
        assert cfg.MODEL.RECURRENT.GRAD == grad and cfg.MODEL.RECURRENT.TIMESTEPS == steps
        assert cfg.MODEL.BACKBONE.NAME == backbone
    rmask = get_rpanoptic_cfg(
        os.path.join(ROOT, "configs/COCO-PanopticSegmentation/panoptic_rmask_R_50_crbp20_1x.yaml")
    )
    assert rmask.MODEL.ROI_MASK_HEAD.NAME == "RecurrentMaskRCNNConvUpsampleHead"

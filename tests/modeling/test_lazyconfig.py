"""The LazyConfigs (configs/LazyConfigs/*.py): they build the same models as their YAML twins
(parameter names and shapes), one trains a step with LCPHook, and a Python config from
elsewhere loads only when trusted."""

import itertools
import os

import pytest
import torch
from _detectron import ROOT, fake_batch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import SimpleTrainer

from rpanoptic.engine.hooks import LCPHook
from rpanoptic.engine.setup import check_python_config, get_rpanoptic_cfg
from rpanoptic.modeling import build_model

LAZY = os.path.join(ROOT, "configs", "LazyConfigs")
NAMES = ["panoptic_rfpn_R_50_crbp20_1x", "panoptic_rmask_R_50_crbp20_1x"]


@pytest.mark.parametrize("name", NAMES)
def test_lazy_config_builds_the_yaml_model(name):
    lazy = instantiate(LazyConfig.load(os.path.join(LAZY, name + ".py")).model)
    yaml = os.path.join(ROOT, "configs", "COCO-PanopticSegmentation", name + ".yaml")
    built = build_model(get_rpanoptic_cfg(yaml, ["MODEL.DEVICE", "cpu"]))
    shapes = {k: tuple(v.shape) for k, v in lazy.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in built.state_dict().items()}
    assert any(".recurrence.cell." in k for k in shapes)
    for mine, theirs in zip(lazy.modules(), built.modules()):
        assert type(mine) is type(theirs)


def test_lazy_rfpn_trains_a_step_with_the_penalty():
    cfg = LazyConfig.load(os.path.join(LAZY, "panoptic_rfpn_R_50_crbp20_1x.py"))
    model_cfg = cfg.model
    model_cfg.backbone.bottom_up.stages.depth = 18
    model_cfg.backbone.bottom_up.stages.norm = "GN"
    del model_cfg.backbone.bottom_up.stages.stride_in_1x1  # not an argument of BasicBlock
    model_cfg.backbone.bottom_up.stem.norm = "GN"
    assert model_cfg.backbone.placement == "topdown"  # the shipped layout, trained here
    for level in model_cfg.backbone.widths:
        rec = model_cfg.backbone.recurrences[level]
        rec.timesteps, rec.neumann_steps, rec.cell.timesteps = 3, 3, 3
    model_cfg.roi_heads.batch_size_per_image = 32
    model_cfg.proposal_generator.post_nms_topk = (64, 64)
    model_cfg.proposal_generator.pre_nms_topk = (200, 200)
    torch.manual_seed(0)
    model = instantiate(model_cfg).train()
    cfg.optimizer.params.model = model
    cfg.optimizer.lr = 0.01
    optimizer = instantiate(cfg.optimizer)
    batch = fake_batch(2, size=64, num_classes=80, num_stuff=54)
    trainer = SimpleTrainer(model, itertools.repeat(batch), optimizer)
    trainer.register_hooks([LCPHook(lcp_weight=cfg.train.lcp_weight, period=1)])
    cell = model.backbone.rfpn["p3"].recurrence.cell
    before = cell.w_inh.detach().clone()
    trainer.train(0, 1)
    history = trainer.storage.histories()
    assert "loss_lcp" in history and torch.isfinite(torch.tensor(history["loss_lcp"].latest()))
    assert "recurrent/backbone.rfpn.p3.recurrence/spectral_radius" in history
    assert not torch.equal(before, cell.w_inh)  # the recurrent cell learned


def test_python_configs_from_elsewhere_need_trust(tmp_path, monkeypatch):
    monkeypatch.delenv("RPANOPTIC_TRUST_CONFIG", raising=False)
    check_python_config(os.path.join(LAZY, NAMES[0] + ".py"), LAZY)  # shipped: fine
    mine = str(tmp_path / "mine.py")
    with pytest.raises(ValueError, match=r"mine.py is a Python config.*--trust-config"):
        check_python_config(mine, LAZY)
    check_python_config(mine, LAZY, trusted=True)
    monkeypatch.setenv("RPANOPTIC_TRUST_CONFIG", "1")
    check_python_config(mine, LAZY)
    check_python_config(str(tmp_path / "c.yaml"), LAZY)  # not Python: YAML loads safely

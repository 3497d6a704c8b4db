"""MODEL.RECURRENT.LR_FACTOR: the recurrent cells' learning rate, and nothing else's, is scaled,
also through the LR schedule."""

import pytest
import torch
from _detectron import RFPN, tiny_cfg

from rpanoptic.engine import Trainer
from rpanoptic.modeling import build_model, parameter_groups


def _lrs(optimizer):
    return {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}


def test_lr_factor_scales_only_the_recurrent_cells_through_the_schedule():
    torch.manual_seed(0)
    cfg = tiny_cfg(RFPN, "SOLVER.BASE_LR", 0.01, "SOLVER.WARMUP_ITERS", 5)
    model = build_model(cfg)
    plain = Trainer.build_optimizer(cfg, model)
    cfg.MODEL.RECURRENT.LR_FACTOR = 10.0
    scaled = Trainer.build_optimizer(cfg, model)
    recurrent = {id(p) for p in parameter_groups(model)["recurrent"].values()}
    assert recurrent
    before, after = _lrs(plain), _lrs(scaled)
    assert before.keys() == after.keys() == {id(p) for p in model.parameters() if p.requires_grad}
    for key, lr in before.items():
        assert after[key] == pytest.approx(lr * (10.0 if key in recurrent else 1.0))
    scheduler = Trainer.build_lr_scheduler(cfg, scaled)
    for _ in range(3):  # in the warm-up, every lr is multiplied alike
        scaled.step()
        scheduler.step()
    now = _lrs(scaled)
    rec = next(iter(recurrent))
    other = next(k for k in now if k not in recurrent)
    assert now[rec] / now[other] == pytest.approx(10.0 * before[rec] / before[other])
    assert now[other] < before[other]  # the warm-up did scale it


def test_lr_factor_must_be_positive():
    with pytest.raises(ValueError, match="LR_FACTOR = 0.0 is invalid; allowed: a number > 0"):
        build_model(tiny_cfg(RFPN, "MODEL.RECURRENT.LR_FACTOR", 0.0))

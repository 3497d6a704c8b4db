"""The timestep sweep on whole models (rpanoptic.recurrence.sweep): equal to separate runs,
one recurrence run per input."""

import contextlib

import pytest
import torch
from _detectron import RFPN, RMASK, fake_batch, tiny_cfg

from rpanoptic.modeling import build_model, recurrent_layers
from rpanoptic.recurrence import sweep

pytestmark = pytest.mark.usefixtures("event_storage")


def test_sweep_equals_separate_runs():
    torch.manual_seed(0)
    counts = [1, 3, 6]
    for config in (RFPN, RMASK):
        model = build_model(tiny_cfg(config, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)).eval()
        for level in getattr(model.backbone, "rfpn", {}).values():
            torch.nn.init.constant_(level.scale, 0.5)
        batch = fake_batch(1)
        with torch.no_grad(), sweep(model, counts) as set_count:
            swept = {}
            for t in counts:
                set_count(t)
                swept[t] = model(batch)[0]
        layers = recurrent_layers(model)
        for t in counts:
            with contextlib.ExitStack() as steps, torch.no_grad():
                for layer in layers.values():
                    steps.enter_context(layer.using(test_timesteps=t))
                alone = model(batch)[0]
            assert torch.equal(swept[t]["panoptic_seg"][0], alone["panoptic_seg"][0]), (config, t)
            assert torch.equal(swept[t]["sem_seg"], alone["sem_seg"])
            a, b = swept[t]["instances"], alone["instances"]
            assert torch.equal(a.pred_masks, b.pred_masks) and torch.equal(a.scores, b.scores)
        assert not torch.equal(swept[1]["sem_seg"], swept[6]["sem_seg"]) or config == RMASK


def test_sweep_runs_each_recurrence_once_per_input():
    model = build_model(tiny_cfg(RFPN)).eval()
    calls = []
    for level in model.backbone.rfpn.values():
        level.recurrence.cell.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad(), sweep(model, [2, 5]) as set_count:
        for t in (2, 5):
            set_count(t)
            model(fake_batch(1))
    assert len(calls) == 4 * 5  # 4 levels, one run to the largest count

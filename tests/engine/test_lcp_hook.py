"""LCPHook on whole models: loss_lcp reaches the hGRU, inside plain trainers and DDP-style
wrappers, and the warning when no hook adds the penalty."""

import logging

import pytest
import torch
from _detectron import RFPN, RMASK, fake_batch, tiny_cfg

from rpanoptic.engine import LCPHook
from rpanoptic.modeling import build_model, recurrent_layers

pytestmark = pytest.mark.usefixtures("event_storage")


def _hooked(model, weight=2.0):
    hook = LCPHook(lcp_weight=weight, period=0)

    class _Trainer:  # the two attributes LCPHook uses
        pass

    hook.trainer = _Trainer()
    hook.trainer.model = model
    hook.before_train()
    return hook


@pytest.mark.parametrize("config", [RFPN, RMASK])
def test_lcp_hook_adds_loss_lcp_with_gradient_to_hgru(config):
    torch.manual_seed(0)
    cfg = tiny_cfg(config, "MODEL.RECURRENT.LCP_TAU", 0.1)
    model = build_model(cfg).train()
    hook = _hooked(model, weight=2.0)
    losses = model(fake_batch())
    layers = recurrent_layers(model)
    expected = 2.0 * sum(layer.lcp for layer in layers.values())
    torch.testing.assert_close(losses["loss_lcp"], expected)
    assert losses["loss_lcp"].item() > 0
    losses["loss_lcp"].backward()
    cells = [layer.cell for layer in layers.values()]
    assert all(c.w_inh.grad is not None and c.w_inh.grad.abs().sum() > 0 for c in cells)
    hook.after_train()
    assert "loss_lcp" not in model(fake_batch())


def test_lcp_hook_with_plain_simple_trainer_and_ddp_style_wrapper():
    from detectron2.engine import SimpleTrainer

    torch.manual_seed(0)
    model = build_model(tiny_cfg(RFPN, "MODEL.RECURRENT.LCP_TAU", 0.1)).train()

    class Wrapper(torch.nn.Module):  # exposes .module like DistributedDataParallel
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *a, **k):
            return self.module(*a, **k)

    wrapped = Wrapper(model)
    batches = iter([fake_batch(1, seed=s) for s in range(3)])
    before = model.backbone.rfpn["p2"].recurrence.cell.w_exc.detach().clone()
    trainer = SimpleTrainer(wrapped, batches, torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.register_hooks([LCPHook(lcp_weight=1.0, period=1)])
    trainer.train(0, 2)
    history = trainer.storage.history("loss_lcp").values()
    assert len(history) == 2 and all(v > 0 for v, _ in history)
    assert not torch.equal(before, model.backbone.rfpn["p2"].recurrence.cell.w_exc)
    scalars = trainer.storage.latest()
    for metric in ("residual", "spectral_radius", "neumann_fallbacks", "steps", "lcp"):
        assert f"recurrent/backbone.rfpn.p2.recurrence/{metric}" in scalars, metric


def test_warns_once_without_hook(caplog):
    from rpanoptic.modeling import recurrent_config as rec_mod

    rec_mod._warned.clear()
    model = build_model(tiny_cfg(RFPN)).train()
    with caplog.at_level(logging.WARNING, logger="rpanoptic"):
        model(fake_batch(1))
        model(fake_batch(1))
    warnings = [r for r in caplog.records if "trains plain rbp" in r.getMessage()]
    assert len(warnings) == 1

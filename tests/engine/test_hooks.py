"""Training hooks: the LCP's calibration against the authors' penalty, per-group parameter
statistics, and recurrence diagnostics reaching metrics.json and the diagnostics plot."""

import json

import pytest
import torch
from _detectron import RFPN, RMASK, fake_batch, tiny_cfg
from detectron2.engine import SimpleTrainer
from detectron2.engine.hooks import PeriodicWriter
from detectron2.utils.events import JSONWriter

from rpanoptic.engine import LCPHook, ParameterStatsHook
from rpanoptic.evaluation.report import plot_recurrent_diagnostics
from rpanoptic.modeling import build_model, parameter_groups, recurrent_layers

pytestmark = pytest.mark.usefixtures("event_storage")


def _attach(hook, model):
    class _Trainer:  # the attribute LCPHook uses outside a training loop
        pass

    hook.trainer = _Trainer()
    hook.trainer.model = model
    hook.before_train()
    return hook


def test_default_config_reproduces_the_authors_penalty_on_the_mask_head():
    """Default LCP_WEIGHT / LCP_REDUCTION: loss_lcp = XI * sum((1^T J - tau)^+)^2 with the
    authors' XI = 1e-3, in value and in its gradient for every cell parameter."""
    torch.manual_seed(0)
    cfg = tiny_cfg(RMASK, "MODEL.RECURRENT.LCP_TAU", 0.1)  # tau low enough to be active
    assert cfg.MODEL.RECURRENT.LCP_WEIGHT == 1e-3 and cfg.MODEL.RECURRENT.LCP_REDUCTION == "sum"
    model = build_model(cfg).train()
    hook = _attach(LCPHook(cfg), model)
    (layer,) = recurrent_layers(model).values()
    with layer.recording() as record:
        loss = model(fake_batch())["loss_lcp"]

    cell, x = layer.cell, record.input
    with torch.no_grad():
        h = torch.zeros_like(x)
        for _ in range(cfg.MODEL.RECURRENT.TIMESTEPS - 1):
            h = cell(x, h)
    prev = h.requires_grad_()
    last = cell(x, prev)
    (vj,) = torch.autograd.grad(last, prev, torch.ones_like(last), create_graph=True)
    theirs = 1e-3 * ((vj - 0.1).clamp(min=0) ** 2).sum()
    assert theirs.item() > 0
    torch.testing.assert_close(loss, theirs, rtol=1e-5, atol=0)
    params = list(cell.parameters())
    # float32: the forward-mode gradient sums in another order (exact in float64, see
    # tests/recurrence/test_lcp_gradient.py), so tolerances are relative to each tensor's scale.
    for a, b in zip(torch.autograd.grad(loss, params), torch.autograd.grad(theirs, params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
    hook.after_train()


@pytest.mark.parametrize(
    "config, expected",
    [
        (RFPN, {"recurrent", "rfpn_scale", "backbone", "fpn", "heads"}),
        (RMASK, {"recurrent", "backbone", "fpn", "heads"}),
    ],
)
def test_parameter_groups_partition_the_model(config, expected):
    model = build_model(tiny_cfg(config))
    groups = parameter_groups(model)
    assert set(groups) == expected
    names = [n for params in groups.values() for n in params]
    assert sorted(names) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    layers = recurrent_layers(model)
    assert all(any(n.startswith(f"{layer}.") for layer in layers) for n in groups["recurrent"])
    assert all(n.startswith("backbone.bottom_up.") for n in groups["backbone"])


def _train(model, tmp_path, iters=2, lr=0.1):
    batches = iter([fake_batch(1, seed=s) for s in range(iters)])
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)  # no momentum: update = lr * grad
    trainer = SimpleTrainer(model, batches, optimizer)
    writer = JSONWriter(str(tmp_path / "metrics.json"))
    trainer.register_hooks(
        [
            LCPHook(lcp_weight=1e-3, period=1),
            ParameterStatsHook(period=1),
            PeriodicWriter([writer], period=1),
        ]
    )
    trainer.train(0, iters)
    return trainer, tmp_path / "metrics.json"


def test_parameter_stats_measure_the_sgd_update(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(RFPN, "MODEL.RECURRENT.LCP_TAU", 0.1)).train()
    trainer, _ = _train(model, tmp_path)
    latest = trainer.storage.latest()
    groups = parameter_groups(model)
    for group, params in groups.items():
        grad, update, weight, ratio = (
            latest[f"params/{group}/{m}"][0]
            for m in ("grad_norm", "update_norm", "weight_norm", "update_ratio")
        )
        assert grad > 0, group
        assert update == pytest.approx(0.1 * grad, rel=1e-4), group  # plain SGD, lr 0.1
        expected = torch.linalg.vector_norm(
            torch.stack([p.detach().norm() for p in params.values()])
        )
        assert weight == pytest.approx(float(expected), rel=1e-6), group
        assert ratio == pytest.approx(update / weight, rel=1e-6), group


def test_diagnostics_reach_metrics_json_and_the_plot(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(RFPN, "MODEL.RECURRENT.LCP_TAU", 0.1)).train()
    _, metrics = _train(model, tmp_path)
    records = [json.loads(line) for line in open(metrics) if line.strip()]
    assert [r["iteration"] for r in records] == [0, 1]
    for record in records:
        for level in ("p2", "p3", "p4", "p5"):
            key = f"recurrent/backbone.rfpn.{level}.recurrence/spectral_radius"
            assert 0 < record[key] < 2, key
        assert record["params/recurrent/update_ratio"] > 0
        assert record["loss_lcp"] > 0
    png = tmp_path / "diagnostics.png"
    layers = plot_recurrent_diagnostics(str(metrics), str(png), tau=0.1)
    assert layers == [f"backbone.rfpn.{lvl}.recurrence" for lvl in ("p2", "p3", "p4", "p5")]
    assert png.stat().st_size > 10_000


def test_diagnostics_plot_draws_nothing_without_recurrent_scalars(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"iteration": 0, "total_loss": 1.0}) + "\n")
    assert plot_recurrent_diagnostics(str(metrics), str(tmp_path / "d.png")) == []
    assert not (tmp_path / "d.png").exists()


def test_contraction_table_and_picture(tmp_path):
    from rpanoptic.analysis.contraction import write_contraction

    rows = [
        dict(mode=m, iteration=i, layer=f"backbone.rfpn.{lvl}.recurrence", metric=k, value=v)
        for m, base in (("crbp", 0.8), ("rbp", 1.1))
        for i in (4, 9)
        for lvl in ("p3", "p4")
        for k, v in (("spectral_radius", base + i / 4), ("neumann_fallbacks", float(i > 5)))
    ]
    files = write_contraction(rows, str(tmp_path / "c.csv"), str(tmp_path / "c.png"), "t", 0.9)
    with open(files["csv"]) as f:
        lines = f.read().splitlines()
    assert lines[0] == "mode,iteration,layer,metric,value" and len(lines) == len(rows) + 1
    assert "rbp,9,backbone.rfpn.p4.recurrence,spectral_radius,3.35" in lines
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_gradients_by_mode_differ_only_by_the_penalty():
    from rpanoptic.analysis.gradients import gradient_table, gradients_by_mode

    torch.manual_seed(0)
    cfg = tiny_cfg(RFPN, "MODEL.RECURRENT.LCP_TAU", 0.1, "MODEL.RFPN.SCALE_INIT", 1.0)
    model = build_model(cfg).train()
    batch = fake_batch(1)
    grads = gradients_by_mode(model, batch, ["crbp", "rbp"], lcp_weight=0.0)
    rows = gradient_table(model, grads, reference="rbp")
    assert {r["set"] for r in rows} >= {
        "group:recurrent",
        "group:heads",
        "layer:backbone.rfpn.p2.recurrence",
    }
    for row in rows:  # without the penalty, crbp's gradient is rbp's
        assert row["rel_error"] == 0.0 and row["grad_norm"] > 0, row
    weighted = gradients_by_mode(model, batch, ["crbp", "rbp"], lcp_weight=1.0)
    by_set = {r["set"]: r for r in gradient_table(model, weighted, "rbp") if r["mode"] == "crbp"}
    assert by_set["group:recurrent"]["rel_error"] > 1e-3  # the active penalty adds to it
    assert by_set["group:heads"]["rel_error"] == 0.0  # and reaches no head
    assert all(layer.grad == "crbp" for layer in recurrent_layers(model).values())  # restored

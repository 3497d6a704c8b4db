"""tools/benchmark.py runs end to end on a tiny model and writes its tables and plot."""

import csv
import os
import subprocess
import sys

from _detectron import ROOT

TINY = (
    "MODEL.RESNETS.DEPTH 18 MODEL.RESNETS.RES2_OUT_CHANNELS 64 MODEL.FPN.OUT_CHANNELS 32 "
    "MODEL.ROI_MASK_HEAD.CONV_DIM 32 MODEL.SEM_SEG_HEAD.CONVS_DIM 32 MODEL.HGRU.GN_GROUPS 8 "
    "MODEL.RECURRENT.NEUMANN_STEPS 2"
).split()
COLUMNS = [
    "model",
    "grad",
    "timesteps",
    "device",
    "params_M",
    "train_step_ms",
    "train_peak_mb",
    "infer_img_s",
]


def test_benchmark_writes_results(tmp_path):
    config = os.path.join(
        ROOT, "configs/COCO-PanopticSegmentation/panoptic_rfpn_R_50_crbp20_1x.yaml"
    )
    argv = ["--config-file", config, "--steps", "1,2", "--grad", "bptt,crbp"]
    argv += ["--image-size", "128", "--batch", "1", "--iters", "1", "--warmup", "0"]
    argv += ["--device", "cpu", "--output-dir", str(tmp_path)]
    script = os.path.join(ROOT, "tools", "benchmark.py")
    done = subprocess.run([sys.executable, script, *argv, *TINY], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "crbp train memory max/min over N" in done.stdout

    with open(tmp_path / "results.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == COLUMNS
    name = "panoptic_rfpn_R_50_crbp20_1x"
    assert [(r["model"], r["grad"], r["timesteps"]) for r in rows] == [
        ("baseline", "-", "0"),
        (name, "bptt", "1"),
        (name, "bptt", "2"),
        (name, "crbp", "1"),
        (name, "crbp", "2"),
    ]
    for r in rows:
        for key in ("params_M", "train_step_ms", "train_peak_mb", "infer_img_s"):
            assert float(r[key]) > 0, (r["model"], r["grad"], r["timesteps"], key)
    assert float(rows[1]["params_M"]) > float(rows[0]["params_M"])  # the recurrent parameters

    with open(tmp_path / "targets.csv") as f:
        goals = {r["target"]: r for r in csv.DictReader(f)}
    assert set(next(iter(goals.values()))) == {"target", "value", "limit", "met"}
    assert "bptt train memory N=2 / N=1" in goals
    assert (tmp_path / "memory_vs_steps.png").stat().st_size > 0


def test_the_engine_benchmarks_reference_crbp_is_the_same_gradient():
    """tools/benchmark_recurrence.py times "crbp_ref" (C-RBP organised as the authors' code:
    graphs kept from the forward pass, the Neumann sum in a hook). It is a fair comparator only
    if it computes the same gradient as Recurrence(grad="crbp"): checked in float64."""
    import importlib.util

    import torch

    from rpanoptic.recurrence import HGRUCell, Recurrence

    path = os.path.join(ROOT, "tools", "benchmark_recurrence.py")
    spec = importlib.util.spec_from_file_location("benchmark_recurrence", path)
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(os.path.join(ROOT, "tools"))
    torch.manual_seed(0)
    cell = HGRUCell(8, gn_groups=4, timesteps=6).double()
    rec = Recurrence(cell, 6, grad="crbp", neumann_steps=7).train()
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    grads = []
    for forward in (lambda x: bench.reference_crbp(rec, x), lambda x: (rec(x), rec.lcp)):
        cell.zero_grad()
        xx = x.clone().requires_grad_()
        h, lcp = forward(xx)
        assert lcp.item() > 0  # the penalty is active, so its double backward is compared too
        (h.square().mean() + 10 * lcp).backward()
        grads.append([xx.grad] + [p.grad.clone() for p in cell.parameters()])
    for ref, ours in zip(*grads):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)

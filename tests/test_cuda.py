"""The CUDA path against the CPU and exact answers: gradients of every learning mode, the
recurrence under autocast, a mixed-precision training run of the whole model through the
trainer, and the Pathfinder runner. Skipped where torch sees no GPU (CI has none)."""

import copy
import json
import os

import pytest
import torch
from _cells import drive, small_hgru
from _detectron import RFPN, ROOT, TINY
from test_rbp import assert_grads_close, exact_implicit_grads

from rpanoptic.recurrence import Recurrence

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _grads(cell, x, v, grad, device, timesteps=60, neumann_steps=60):
    """d(<v, h> + LCP)/d(x, parameters) of a Recurrence run on ``device``, returned on CPU."""
    cell = copy.deepcopy(cell).to(device)
    rec = Recurrence(cell, timesteps, grad=grad, neumann_steps=neumann_steps).train()
    x_in = x.detach().to(device).requires_grad_()
    with rec.using(lcp_collected=True):
        h = rec(x_in)
        loss = (h * v.to(device)).sum()
        if rec.constrained:
            loss = loss + rec.lcp
    grads = torch.autograd.grad(loss, [x_in, *cell.parameters()])
    return [g.cpu() for g in grads]


@pytest.mark.parametrize("grad", ["bptt", "cbptt", "rbp", "crbp"])
def test_cuda_gradients_equal_cpu_gradients(grad):
    cell = small_hgru(norm="GN")
    x, v = drive(), drive(seed=2, requires_grad=False)
    cpu = _grads(cell, x, v, grad, "cpu")
    cuda = _grads(cell, x, v, grad, "cuda")
    assert_grads_close(cuda, cpu, 1e-9)


def test_cuda_rbp_gradient_matches_the_exact_implicit_gradient():
    cell = small_hgru()
    x, v = drive(), drive(seed=2, requires_grad=False)
    exact = exact_implicit_grads(cell, x, v)
    got = _grads(cell, x, v, "rbp", "cuda", timesteps=400, neumann_steps=200)
    assert_grads_close(got, exact, 1e-3)


def test_recurrence_stays_float32_under_autocast():
    torch.manual_seed(0)
    stem = torch.nn.Conv2d(3, 8, 3, padding=1).cuda()
    cell = small_hgru(channels=8, norm="GN", dtype=torch.float32).cuda()
    rec = Recurrence(cell, 10, grad="crbp", neumann_steps=10).train()
    image = torch.randn(2, 3, 16, 16, device="cuda")

    def run(amp):
        stem.zero_grad(), cell.zero_grad()
        with rec.using(lcp_collected=True), torch.autocast("cuda", torch.float16, enabled=amp):
            x = stem(image)
            h = rec(x)
            loss = h.square().mean() + rec.lcp
        (loss.float()).backward()
        return x.dtype, h.dtype, rec.lcp.dtype, [p.grad.clone() for p in cell.parameters()]

    x_half, h_amp, lcp_amp, grads_amp = run(True)
    _, _, _, grads_fp32 = run(False)
    assert x_half == torch.float16  # autocast is on around the recurrence...
    assert h_amp == lcp_amp == torch.float32  # ...which runs in float32 inside it
    assert all(torch.isfinite(g).all() for g in grads_amp)
    # Only the half-precision input differs between the two runs.
    assert_grads_close(grads_amp, grads_fp32, 2e-2)


def test_amp_training_run_of_the_rfpn_through_the_trainer(tmp_path):
    """tools/train_net.py on CUDA with SOLVER.AMP.ENABLED: finite losses, a penalty, and the
    recurrent layers' parameters move."""
    from _panoptic_data import dataset_kwargs, make_dataset, unique_name
    from test_train_net import _train_net

    from rpanoptic.data import register_panoptic_dataset

    paths = make_dataset(str(tmp_path / "data"), num_images=4)
    name = unique_name()
    classes = register_panoptic_dataset(name, **dataset_kwargs(paths))
    out = str(tmp_path / "run")
    opts = [*TINY, "MODEL.DEVICE", "cuda", "OUTPUT_DIR", out, "DATALOADER.NUM_WORKERS", 0]
    opts += ["DATASETS.TRAIN", f"('{name}_separated',)", "DATASETS.TEST", "()"]
    for key, value in classes.items():
        opts += [key, value]
    opts += ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", 64]
    opts += ["INPUT.MASK_FORMAT", "bitmask", "SOLVER.AMP.ENABLED", True]
    opts += ["SOLVER.MAX_ITER", 6, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.BASE_LR", 0.01]
    opts += ["SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", 0, "TEST.EVAL_PERIOD", 0]
    opts += ["SOLVER.CHECKPOINT_PERIOD", 3]
    train_net = _train_net()
    train_net.main(
        train_net.parse_args(["--config-file", os.path.join(ROOT, RFPN), *map(str, opts)])
    )

    with open(os.path.join(out, "metrics.json")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    training = [r for r in records if "total_loss" in r]
    assert training and all(torch.isfinite(torch.tensor(r["total_loss"])) for r in training)
    assert training[-1]["loss_lcp"] >= 0
    first = torch.load(os.path.join(out, "model_0000002.pth"), weights_only=False)["model"]
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)["model"]
    recurrent = [k for k in final if ".recurrence." in k and final[k].is_floating_point()]
    assert recurrent and all(final[k].dtype == torch.float32 for k in recurrent)
    assert any(not torch.equal(first[k], final[k]) for k in recurrent)


def test_pathfinder_runs_on_cuda_and_evaluates_as_on_cpu(tmp_path):
    from pathfinder import PathfinderSpec, generate_pathfinder
    from pathfinder.train import PathfinderRun, evaluate, load_split, run_and_report

    spec = PathfinderSpec(size=24, segments=4, snakes=2, dash=3.0, gap=1.5)
    root = str(tmp_path / "pf")
    generate_pathfinder(root, {"train": 64, "val": 32}, spec, seed=0)
    run = PathfinderRun(task="trace", channels=4, kernel_size=3, timesteps=4, iters=20, batch=8)
    run.checkpoint_period = 10
    result = run_and_report(run, root, str(tmp_path / "out"), log=lambda s: None, device="cuda")
    assert result["device"] == torch.cuda.get_device_name(0)
    assert set(result["accuracy"]) == set(run.counts())

    from pathfinder.fixed_point import load_trained

    model = load_trained(run, os.path.join(str(tmp_path / "out"), "checkpoint.pth"))
    val = load_split(root, "val", "trace")
    on_cpu = evaluate(model, val, [1, 4, 12])
    on_gpu = evaluate(model.cuda(), val.to("cuda"), [1, 4, 12])
    for t in (1, 4, 12):
        assert abs(on_cpu["accuracy"][t] - on_gpu["accuracy"][t]) <= 1 / 32 + 1e-9
        assert on_cpu["path_iou"][t] == pytest.approx(on_gpu["path_iou"][t], abs=0.02)
    assert on_cpu["drift"] == pytest.approx(on_gpu["drift"], rel=1e-3, abs=1e-5)

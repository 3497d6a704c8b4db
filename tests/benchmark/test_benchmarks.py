"""tools/benchmark.py runs end to end on a tiny model and writes its tables and plot."""

import csv
import os
import subprocess
import sys

import pytest
import torch
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
    "amp",
    "memory_cap_gb",
    "params_M",
    "train_step_ms",
    "train_peak_mb",
    "train_peak_total_mb",
    "infer_img_s",
    "infer_steps",
]


@pytest.mark.slow
def test_benchmark_writes_results(tmp_path):
    config = os.path.join(
        ROOT, "configs/COCO-PanopticSegmentation/panoptic_rfpn_R_50_crbp20_1x.yaml"
    )
    argv = ["--config-file", config, "--steps", "1,2", "--grad", "bptt,crbp"]
    argv += ["--image-size", "128", "--batch", "1", "--iters", "1", "--warmup", "0"]
    argv += ["--device", "cpu", "--output-dir", str(tmp_path)]
    script = os.path.join(ROOT, "tools", "benchmark.py")
    cmd = [sys.executable, script, "model", *argv, *TINY]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "crbp train memory max/min over N" in done.stdout

    with open(tmp_path / "results.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    stamp = ["commit", "python", "torch", "torchvision", "detectron2", "device", "date"]
    assert reader.fieldnames == COLUMNS + [f"run_{k}" for k in stamp]
    assert {r["run_torch"] for r in rows} == {torch.__version__}
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
    header = {"target", "value", "limit", "met"} | {f"run_{k}" for k in stamp}
    assert set(next(iter(goals.values()))) == header
    assert "bptt train memory N=2 / N=1" in goals
    assert (tmp_path / "memory_vs_steps.png").stat().st_size > 0


def test_the_engine_benchmarks_reference_crbp_is_the_same_gradient():
    """tools/benchmark.py engine times "crbp_ref" (C-RBP organised as the authors' code:
    graphs kept from the forward pass, the Neumann sum in a hook). It is a fair comparator only
    if it computes the same gradient as Recurrence(grad="crbp"): checked in float64."""
    import torch

    from rpanoptic.recurrence import HGRUCell, Recurrence

    bench = _load_tool("engine")
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


def _load_tool(name):
    """The module of ``tools/benchmark.py``'s task ``name``."""
    import importlib

    from rpanoptic.benchmark import TASKS

    return importlib.import_module(TASKS[name][0])


def test_the_model_suite_lists_every_model_against_the_feed_forward_one():
    import pytest

    bench = _load_tool("model")
    with pytest.raises(SystemExit):
        bench.parse_args([])  # neither --config-file nor --suite
    args = bench.parse_args(["--suite", "synthetic", "MODEL.RECURRENT.NEUMANN_STEPS", "5"])
    assert (args.image_size, args.batch) == (160, 4)
    tasks = {label: (config, opts) for label, config, opts in bench.configurations(args)}
    assert list(tasks)[0] == "ff" and len(tasks) == 11
    assert tasks["ff"][1] == []  # the baseline drops the recurrent-only override
    assert tasks["rfpn_bptt5"][1][-4:] == [
        "MODEL.RECURRENT.GRAD",
        "bptt",
        "MODEL.RECURRENT.TIMESTEPS",
        "5",
    ]
    assert tasks["rfpn_crbp10_compile"][1][-2:] == ["MODEL.RECURRENT.COMPILE", "True"]
    assert tasks["rfpn_crbp10_compile_halt"][1][-4:] == [
        "MODEL.RECURRENT.COMPILE",
        "True",
        "MODEL.RECURRENT.HALT_TOL",
        "0.01",
    ]
    assert tasks["rfpn_crbp10_anderson_halt"][1][-4:] == [
        "MODEL.RECURRENT.TEST_SOLVER",
        "anderson",
        "MODEL.RECURRENT.HALT_TOL",
        "0.01",
    ]
    # The suite's own K = 4 comes after the command line's K = 5, so it wins.
    assert tasks["rfpn_crbp10_gmres4"][1][-4:] == [
        "MODEL.RECURRENT.BACKWARD_SOLVER",
        "gmres",
        "MODEL.RECURRENT.NEUMANN_STEPS",
        "4",
    ]
    for config, _ in tasks.values():
        assert os.path.isfile(config), config
    coco = bench.configurations(bench.parse_args(["--suite", "coco"]))
    assert all(os.path.isfile(config) for _, config, _ in coco)
    # The p3-p5 row's overrides reach the config as a list of levels.
    (config, opts) = {label: (c, o) for label, c, o in coco}["rfpn_p3p5_crbp10"]
    from rpanoptic.engine.setup import get_rpanoptic_cfg

    cfg = get_rpanoptic_cfg(config, opts)
    assert list(cfg.MODEL.RFPN.LEVELS) == ["p3", "p4", "p5"]
    assert cfg.MODEL.RECURRENT.TIMESTEPS == 10

    rows = [
        {"model": "ff", "train_step_ms": 100.0, "infer_img_s": 10.0},
        {"model": "rfpn_crbp10", "train_step_ms": 150.0, "infer_img_s": 8.0},
        {"model": "rfpn_crbp10_halt", "train_step_ms": 150.0, "infer_img_s": 9.0},
    ]
    goals = {g["target"]: g for g in bench.suite_targets(rows)}
    assert rows[1]["train_vs_ff"] == 1.5 and rows[1]["infer_vs_ff"] == 1.25
    assert goals["rfpn_crbp10 train time / ff"]["met"] is False  # 1.5 > 1.3
    assert goals["rfpn_crbp10_halt infer time / ff"] == {
        "target": "rfpn_crbp10_halt infer time / ff",
        "value": 1.111,
        "limit": "<= 1.2",
        "met": True,
    }


def test_rounds_take_each_ratio_within_its_round_and_report_median_and_range():
    """--rounds: a model slowed by load in one round is compared with that round's baseline."""
    import pytest

    bench = _load_tool("model")
    with pytest.raises(SystemExit):
        bench.parse_args(["--config-file", "c.yaml", "--rounds", "2"])  # only with --suite
    with pytest.raises(SystemExit):
        bench.parse_args(["--suite", "synthetic", "--rounds", "0"])

    def row(model, r, train, infer):
        return {"model": model, "round": r, "train_step_ms": train, "infer_img_s": infer}

    rows = [
        row("ff", 0, 100.0, 10.0),
        row("rfpn_crbp10_halt", 0, 120.0, 8.0),
        row("ff", 1, 200.0, 5.0),  # a loaded round: everything twice as slow
        row("rfpn_crbp10_halt", 1, 260.0, 4.5),
        row("ff", 2, 100.0, 10.0),
        row("rfpn_crbp10_halt", 2, 110.0, 9.0),
    ]
    bench.suite_ratios(rows)
    assert [r["train_vs_ff"] for r in rows] == [1.0, 1.2, 1.0, 1.3, 1.0, 1.1]
    combined = bench.combine_rounds(rows)
    assert [r["model"] for r in combined] == ["ff", "rfpn_crbp10_halt"]
    halt = combined[1]
    assert halt["rounds"] == 3 and "round" not in halt
    assert halt["train_step_ms"] == 120.0  # medians of the numbers
    assert halt["train_vs_ff"] == 1.2 and (halt["train_vs_ff_lo"], halt["train_vs_ff_hi"]) == (
        1.1,
        1.3,
    )
    # infer ratios 1.25, 1.111, 1.111: median 1.111, range 1.111-1.25
    assert halt["infer_vs_ff"] == 1.111 and halt["infer_vs_ff_hi"] == 1.25
    (goal,) = bench.suite_targets(combined)
    assert goal["met"] is True and goal["range"] == "1.111-1.25"


def test_neumann_tradeoff_measures_error_against_the_long_series():
    tool = _load_tool("neumann")
    args = tool.parse_args(
        ["--shape", "2,8,5,5", "--timesteps", "6", "--terms", "2,15,60", "--rtols", "0,0.2"]
        + ["--exact-terms", "60", "--repeats", "1"]
    )
    rows = {(r["neumann_steps"], r["neumann_rtol"]): r for r in tool.run(args)}
    assert rows[(60, 0.0)]["grad_rel_error"] < 1e-6  # the reference itself
    assert rows[(2, 0.0)]["grad_rel_error"] > rows[(15, 0.0)]["grad_rel_error"] > 0
    assert rows[(15, 0.0)]["mean_terms"] == 15
    assert rows[(15, 0.2)]["mean_terms"] < 15  # the tolerance stopped the series early
    assert 0 < rows[(15, 0.0)]["spectral_radius"] < 1


def test_the_profile_splits_each_step_into_the_engines_phases(tmp_path):
    import pytest

    tool = _load_tool("profile")
    args = ["--shape", "2,8,6,6", "--steps", "4", "--neumann-steps", "3", "--repeats", "2"]
    out = str(tmp_path / "profile")
    assert tool.main([*args, "--grads", "bptt,crbp", "--output-dir", out]) == 0
    with open(os.path.join(out, "phases.csv")) as f:
        rows = list(csv.DictReader(f))
    by = {(r["grad"], r["phase"]): r for r in rows}
    for name in ("graph_free_steps", "implicit_step", "backward/neumann_series", "backward/lcp"):
        assert float(by[("crbp", name)]["ms"]) > 0, name
    assert ("bptt", "unrolled_steps") in by and ("bptt", "graph_free_steps") not in by
    for grad in ("bptt", "crbp"):  # forward and backward parts add up to the whole step
        parts = [r for r in rows if r["grad"] == grad and r["part"] in ("forward", "backward")]
        step = float(by[(grad, "step")]["ms"])
        assert abs(sum(float(r["ms"]) for r in parts) - step) < 1e-6 * step
        assert abs(sum(float(r["share"]) for r in parts) - 1) < 1e-6
    # One graph-free step: the phase's time over the N - 1 steps it ran.
    graph_free = float(by[("crbp", "graph_free_steps")]["ms"])
    assert float(by[("crbp", "one graph-free step")]["ms"]) == pytest.approx(graph_free / 3)
    assert os.path.isfile(os.path.join(out, "phases.png"))
    with open(os.path.join(out, "operators.csv")) as f:
        assert any("conv" in r["operator"] for r in csv.DictReader(f))
    with pytest.raises(SystemExit):
        tool.parse_args(["--grads", "crbp,newton"])


def test_the_levers_compute_what_the_engine_computes():
    import torch

    from rpanoptic.recurrence import HGRUCell

    levers = _load_tool("levers")
    torch.manual_seed(0)
    plain = HGRUCell(8, 3, norm="GN", gn_groups=4, timesteps=20)
    fused = levers.FusedGatesCell(8, 3, norm="GN", gn_groups=4, timesteps=20)
    fused.load_state_dict(plain.state_dict())
    x, h = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(fused(x, h), plain(x, h), rtol=1e-5, atol=1e-6)
    times, diff = levers.graph_free_times(plain, x, h, 4, 2, lambda: None)
    assert diff == 0 and set(times) == {"plain", "inference_mode"}
    assert levers.main(["--lever", "inference_mode", "--shape", "2,8,6,6", "--repeats", "2"]) == 0


def test_the_solver_benchmark_matches_the_neumann_error_with_fewer_products(tmp_path):
    tool = _load_tool("solvers")
    out = str(tmp_path / "solvers")
    argv = ["--shape", "2,8,5,5", "--timesteps", "6", "--terms", "1,2,4,8", "--neumann-steps", "8"]
    argv += ["--exact-terms", "200", "--repeats", "2", "--threads", "1", "--output-dir", out]
    assert tool.main(argv) == 0
    with open(os.path.join(out, "errors.csv")) as f:
        errors = {(r["solver"], int(r["K"])): float(r["grad_rel_error"]) for r in csv.DictReader(f)}
    for k in (1, 2, 4, 8):
        assert errors[("gmres", k)] < errors[("neumann", k)], k
    k_star = min(k for k in (1, 2, 4, 8) if errors[("gmres", k)] <= errors[("neumann", 8)])
    with open(os.path.join(out, "times.csv")) as f:
        times = {r["mode"]: r for r in csv.DictReader(f)}
    assert set(times) == {"crbp_ref", "crbp", f"crbp+gmres@{k_star}", "crbp+gmres@8", "bptt"}
    assert all(int(r["k_star"]) == k_star for r in times.values()) and k_star < 8
    # The solver runs in backward: what a forward keeps for it does not change.
    assert times[f"crbp+gmres@{k_star}"]["saved_mb"] == times["crbp"]["saved_mb"]
    assert float(times["bptt"]["saved_mb"]) > float(times["crbp"]["saved_mb"])
    assert os.path.isfile(os.path.join(out, "solvers.png"))


def test_the_fixed_point_benchmark_counts_steps_by_the_halting_rule(tmp_path):
    """tools/benchmark.py fixed-point on a tiny RFPN with random weights: one row per layer,
    solver and tolerance; a tolerance of 100 halts every solver after its second step (the
    first, from h = 0, is an unbounded relative change), and the distances are to a reference
    that the rows of every solver share."""
    import numpy as np
    import torch
    from _detectron import tiny_cfg
    from PIL import Image

    from rpanoptic.modeling import build_model, recurrent_layers

    config = os.path.join(
        ROOT, "configs/COCO-PanopticSegmentation/panoptic_rfpn_R_50_crbp20_1x.yaml"
    )
    torch.manual_seed(0)
    model = build_model(tiny_cfg(config))
    weights = str(tmp_path / "w.pth")
    torch.save({"model": model.state_dict()}, weights)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        pixels = np.random.default_rng(i).integers(0, 256, (96, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    tool = _load_tool("fixed-point")
    argv = ["--config-file", config, "--input", str(folder), "--images", "2"]
    argv += ["--tols", "100,0.1", "--memories", "2", "--reference-steps", "60"]
    argv += ["--max-steps", "30", "--time-steps", "2", "--output-dir", str(tmp_path / "out")]
    from _detectron import TINY

    assert tool.main(argv + [str(v) for v in TINY] + ["MODEL.WEIGHTS", weights]) == 0
    with open(tmp_path / "out" / "fixed_point.csv") as f:
        rows = list(csv.DictReader(f))
    layers = list(recurrent_layers(model))
    assert len(rows) == len(layers) * 2 * 2
    assert {(r["layer"], r["solver"], float(r["tol"])) for r in rows} == {
        (layer, solver, tol) for layer in layers for solver in ("plain", "anderson 2")
        for tol in (100.0, 0.1)
    }  # fmt: skip
    for r in rows:
        if float(r["tol"]) == 100.0:
            assert float(r["steps"]) == 2.0
        assert 1 <= float(r["steps"]) <= 30 and float(r["distance"]) >= 0
        assert r["batch"] == "2"
    for layer in layers:  # the same h_N and reference for every solver of a layer
        assert len({r["distance_at_N"] for r in rows if r["layer"] == layer}) == 1
    assert (tmp_path / "out" / "fixed_point.png").stat().st_size > 0


def test_operation_counter_counts_convolution_flops_and_map_sized_kernels():
    from rpanoptic.benchmark.counting import OperationCounter

    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    w = torch.randn(4, 8, 3, 3, requires_grad=True)
    with OperationCounter() as forward:
        y = torch.nn.functional.conv2d(x, w, padding=1)
    assert forward.flops == 2 * (2 * 4 * 12 * 12) * (8 * 3 * 3)  # 2 FLOPs a multiply-add
    assert forward.kernels == 1 and forward.map_kernel_flops == 0
    with OperationCounter() as backward:
        y.square().sum().backward()
    assert backward.flops == 2 * forward.flops  # input and weight gradients
    # A feature map used as a kernel (what a convolution's double backward dispatches).
    with OperationCounter() as mapped:
        torch.nn.functional.conv2d(x.detach(), torch.randn(4, 8, 12, 12), padding=0)
    assert mapped.map_kernel_flops == mapped.flops > 0


def test_cost_ratios_are_taken_within_each_round():
    from rpanoptic.benchmark import cost

    args = cost.parse_args(["--only", "rmask_crbp20", "--count-size", "0", "--rounds", "2"])
    assert args.labels == ["ff", "rmask_crbp20"]  # the baseline is always measured

    def row(model, r, train, infer, gflop):
        out = {"model": model, "round": r, "train_ms": train, "infer_ms": infer}
        if r == 0:
            out.update({"c256_train_gflop": gflop, "c256_infer_gflop": gflop / 3})
        return out

    rows = [
        row("ff", 0, 100.0, 10.0, 150.0),
        row("rmask_crbp20", 0, 130.0, 12.0, 180.0),
        row("ff", 1, 200.0, 20.0, 0),  # a loaded round: both twice as slow
        row("rmask_crbp20", 1, 280.0, 24.0, 0),
    ]
    table = cost.combine(rows, args)
    rmask = table[1]
    assert rmask["train_time_ratio"] == pytest.approx((1.3 + 1.4) / 2)
    assert rmask["train_time_ratio_range"] == "1.30-1.40"
    assert rmask["infer_time_ratio"] == pytest.approx(1.2)
    assert rmask["c256_train_flop_ratio"] == pytest.approx(1.2)
    assert table[0]["c256_train_flop_ratio"] == 1.0


@pytest.mark.slow
def test_cost_table_counts_and_times_a_tiny_model(tmp_path):
    argv = ["cost", "--only", "rfpn_crbp20_default", "--image-size", "64", "--batch", "1"]
    argv += ["--count-size", "96", "--rounds", "1", "--iters", "1", "--warmup", "0"]
    argv += ["--device", "cpu", "--output-dir", str(tmp_path), *TINY]
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), *argv],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / "results.csv") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    ff, rfpn = rows["ff"], rows["rfpn_crbp20_default"]
    for size in (64, 96):
        assert float(rfpn[f"c{size}_train_gflop"]) > float(ff[f"c{size}_train_gflop"]) > 0
        assert int(rfpn[f"c{size}_train_kernels"]) > int(ff[f"c{size}_train_kernels"])
        assert float(rfpn[f"c{size}_saved_mb"]) > 0
        assert float(rfpn[f"c{size}_map_kernel_gflop"]) == 0  # the penalty by a forward product
    assert float(rfpn["train_time_ratio"]) > 0 and (tmp_path / "cost.png").exists()
    with open(tmp_path / "targets.csv") as f:
        goals = [r["goal"] for r in csv.DictReader(f)]
    assert any("train_flop_ratio" in g for g in goals)

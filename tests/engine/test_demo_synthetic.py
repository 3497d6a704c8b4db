"""`make demo` and the contraction measurement end to end on a handful of 128 px synthetic
images: train, evaluate PQ through COCOPanopticEvaluator, sweep the steps, write the report and
pictures."""

import csv
import json
import os

import pytest
from _experiments import DATA, QUICK, SIZES, run_tool


@pytest.mark.slow
def test_demo_trains_evaluates_and_reports(synthetic_env, tmp_path):
    out = str(tmp_path / "demo")
    done = run_tool(
        synthetic_env,
        "demo.py",
        "--kind",
        "curves",
        "--config-file",
        QUICK,
        "--iters",
        "3",
        "--output-dir",
        out,
        "--device",
        "cpu",
        *DATA,
        *SIZES,
    )
    assert f"Demo results in {out}" in done.stdout
    assert "Wrote the synthetic" not in done.stderr  # the dataset was there: kept
    with open(os.path.join(out, "metrics_final.json")) as f:
        metrics = json.load(f)
    pq = metrics["final"]["panoptic_seg"]
    assert set(pq) >= {"PQ", "PQ_th", "PQ_st"} and 0 <= pq["PQ"] <= 100
    assert sorted(int(t) for t in metrics["timestep_sweep"]) == [1, 2, 3, 6, 9]  # N = 3
    for name in ("training_curves.png", "unfolding.png", "timestep_sweep/timestep_sweep.png"):
        assert os.path.getsize(os.path.join(out, name)) > 1000, name
    assert len([f for f in os.listdir(out) if f.startswith("prediction_")]) == 3
    report = open(os.path.join(out, "report.md")).read()
    assert f"| all | {pq['PQ']:.1f} |" in report and "| t | 1 | 2 | 3 (N) | 6 | 9 |" in report
    assert "3 iterations of batch 2 on cpu" in report


@pytest.mark.slow
def test_demo_on_the_enclosure_scenes_reports_closure_from_nothing(tmp_path):
    """The default demo: its dataset is made when missing, and the report gives the closure
    scores and every category's PQ at each step count."""
    env = dict(os.environ, RPANOPTIC_DATASETS=str(tmp_path / "datasets"))
    out = str(tmp_path / "demo")
    opts = ["MODEL.RECURRENT.TIMESTEPS", "2", "MODEL.RECURRENT.NEUMANN_STEPS", "2"]
    opts += ["SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0"]
    done = run_tool(
        env, "demo.py", "--iters", "2", "--output-dir", out, "--device", "cpu", *DATA, *SIZES, *opts
    )
    assert "Wrote the synthetic" in done.stdout + done.stderr  # made from nothing
    assert os.path.isfile(
        tmp_path / "datasets" / "synthetic_enclosure_train6_val3" / "generator.json"
    )
    with open(os.path.join(out, "metrics_final.json")) as f:
        metrics = json.load(f)
    assert 0 <= metrics["final"]["enclosure"]["tokens_no_loop/found"] <= 100
    sweep = metrics["timestep_sweep"]
    assert sorted(int(t) for t in sweep) == [1, 2, 4, 6]  # N = 2
    assert all("token_closure" in r["enclosure"] for r in sweep.values())
    report = open(os.path.join(out, "report.md")).read()
    assert "Closure (of the tokens" in report and "| PQ/enclosed |" in report
    assert "| token_closure |" in report and "| inside |" in report
    assert os.path.getsize(os.path.join(out, "unfolding.png")) > 1000


@pytest.mark.slow
def test_contraction_script_trains_each_mode_and_plots(synthetic_env, tmp_path):
    res = tmp_path / "res"
    args = ["--config-file", QUICK, "--iters", "2", "--period", "1", *DATA]
    args += ["--output-dir", str(tmp_path / "out"), "--results-dir", str(res)]
    done = run_tool(
        synthetic_env, "analyze.py", "contraction", *args, "DATALOADER.NUM_WORKERS", "0"
    )
    assert "crbp: spectral radius at iteration 1" in done.stdout
    with open(res / "panoptic_rfpn_R_18_crbp_instant_test.csv") as f:
        rows = list(csv.DictReader(f))
    radius = [r for r in rows if r["metric"] == "spectral_radius"]
    assert {(r["mode"], r["iteration"]) for r in radius} == {
        (m, i) for m in ("crbp", "rbp") for i in ("0", "1")
    }
    assert len({r["layer"] for r in radius}) == 3  # p3-p5
    assert all(0 < float(r["value"]) < 2 for r in radius)
    assert {r["mode"] for r in rows if r["metric"] == "lcp"} == {"crbp"}  # rbp has no penalty
    assert (res / "panoptic_rfpn_R_18_crbp_instant_test.png").stat().st_size > 10_000

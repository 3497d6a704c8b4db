"""`make compare`: the plan scheduler, resuming (whole runs and an interrupted run), and the
comparison's statistics against hand-computed values."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
from _experiments import DATA, QUICK, SIZES, run_python
from scipy.stats import t as scipy_t
from synthetic_comparison.plan import COUNTS, Entry, run_plan, summarize, write_comparison
from synthetic_comparison.tables import paired_tests

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(PROJECT, "compare.py")


def _with_project(env):
    """``env`` with this project on the path, as ``python -m synthetic_comparison.run_one``
    needs when started from the repository root."""
    path = os.pathsep.join(filter(None, [PROJECT, env.get("PYTHONPATH")]))
    return dict(env, PYTHONPATH=path)


def _fake(model, seed, pq, sweep=True):
    values = {"PQ": pq, "PQ_th": pq - 10, "PQ_st": pq + 10, "SQ": 80.0, "RQ": pq + 1}
    costs = {"params_M": 2.0, "train_peak_mb": 1000.0 + seed, "step_s": 1.0, "infer_img_s": 0.1}
    sweeps = {str(t): {"PQ": pq + t, "PQ_th": pq, "PQ_st": pq} for t in COUNTS} if sweep else {}
    return dict(
        model=model,
        seed=seed,
        iters=5,
        **values,
        **costs,
        sweep=sweeps,
        trained_timesteps=10 if sweep else 0,
        train_s=60.0,
    )


def test_summary_is_mean_and_sample_sd_over_seeds(tmp_path):
    runs = [_fake("ff", 0, 40.0, False), _fake("rec", 0, 30.0), _fake("ff", 1, 44.0, False)]
    runs += [_fake("rec", 1, 33.0), _fake("rec", 2, 39.0)]
    rows = summarize(runs)
    assert [(r["model"], r["seeds"]) for r in rows] == [("ff", 2), ("rec", 3)]
    assert rows[0]["PQ"] == pytest.approx(42.0) and rows[0]["PQ_sd"] == pytest.approx(2**0.5 * 2)
    assert rows[1]["PQ"] == pytest.approx(34.0)
    assert rows[1]["PQ_sd"] == pytest.approx(np.std([30, 33, 39], ddof=1))
    assert rows[1]["train_peak_mb"] == pytest.approx(1001.0)
    files = write_comparison(runs, str(tmp_path))
    table = open(files["comparison.md"]).read()
    assert "| ff | 2 | 42.0 ± 2.8 | 32.0 ± 2.8 | 52.0 ± 2.8 |" in table
    assert "| rec | 35.0 | 36.0 | 37.0 | 39.0 | 44.0 | 54.0 | 64.0 |" in table  # 34 + t
    with open(files["runs.csv"]) as f:
        assert len(list(csv.DictReader(f))) == 5
    assert os.path.getsize(files["pq_vs_steps.png"]) > 1000


@pytest.mark.slow
def test_compare_runs_each_config_and_resumes(synthetic_env, tmp_path):
    results, out = str(tmp_path / "results"), str(tmp_path / "compare")
    configs = f"configs/Synthetic/panoptic_fpn_R_18.yaml,{QUICK}"
    args = ["--configs", configs, "--seeds", "0", "--iters", "2", "--device", "cpu"]
    args += ["--results-dir", results, "--output-dir", out, *DATA]
    args += ["DATALOADER.NUM_WORKERS", "0", "MODEL.RECURRENT.DIAGNOSTICS_PERIOD", "1", *SIZES]
    first = run_python(_with_project(synthetic_env), SCRIPT, *args)
    assert first.stdout.count("[start] ") == 2  # two runs, each announced
    with open(os.path.join(results, "comparison.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["Panoptic FPN (feed-forward)", "RFPN p3-p5, crbp N=3"]
    for row in rows:
        assert float(row["params_M"]) > 1 and float(row["train_peak_mb"]) > 100
        assert float(row["step_s"]) > 0 and float(row["infer_img_s"]) > 0
    assert float(rows[1]["params_M"]) > float(rows[0]["params_M"])
    result = os.path.join(results, "panoptic_rfpn_R_18_crbp_instant_test", "seed0.json")
    with open(result) as f:
        run = json.load(f)
    assert run["iters"] == 2
    radius = run["diagnostics"]["recurrent/backbone.rfpn.p3.recurrence/spectral_radius"]
    # metrics.json keeps the latest value per writer period (20 iterations): the last one here
    assert [it for it, _ in radius] == [1] and all(0 < r < 2 for _, r in radius)
    assert len(run["diagnostics"]["params/recurrent/update_ratio"]) == 1
    assert "grouping" in run and run["grouping"]["instances"] >= 0
    stamp = os.stat(result).st_mtime_ns
    again = run_python(_with_project(synthetic_env), SCRIPT, *args)
    assert "[start] " not in again.stdout and os.stat(result).st_mtime_ns == stamp
    assert "| RFPN p3-p5, crbp N=3 |" in again.stdout


def test_paired_tests_against_hand_computed_values():
    runs = [
        dict(_fake("feed-forward", s, pq, False), name="ff") for s, pq in enumerate([40, 42, 41])
    ]
    runs += [dict(_fake("rec", s, pq), name="rec") for s, pq in enumerate([41, 45, 42])]
    runs += [dict(_fake("other", 0, 50.0), name="other")]  # one seed: no p-value
    rows = paired_tests(runs, {"rec": "ff", "other": "ff", "ff": ""}, metrics=("PQ",))
    rec, other = rows
    d = np.array([1.0, 3.0, 1.0])
    assert rec["n"] == 3 and rec["diff"] == pytest.approx(d.mean())
    assert rec["diff_sd"] == pytest.approx(d.std(ddof=1))
    t = d.mean() / (d.std(ddof=1) / np.sqrt(3))  # the paired t statistic, 2 degrees of freedom
    assert rec["p"] == pytest.approx(2 * (1 - scipy_t.cdf(t, df=2)))
    assert other["n"] == 1 and other["diff"] == pytest.approx(10.0) and np.isnan(other["p"])


class _FakeRun:
    """Stands in for a training process: writes a result and a checkpoint at once."""

    def __init__(self, calls, entry, seed, folder, result, init, threads):
        calls.append((entry.name, seed, init))
        with open(os.path.join(folder, "model_final.pth"), "w") as f:
            f.write("weights")
        os.makedirs(os.path.dirname(result), exist_ok=True)
        with open(result, "w") as f:
            json.dump(dict(_fake(entry.label, seed, 40.0, False), name=entry.name), f)
        self.returncode = 0

    def poll(self):
        return self.returncode


@pytest.mark.slow
def test_run_plan_orders_seed_by_seed_starts_from_parent_and_resumes(tmp_path):
    plan = [
        Entry("ff", "ff", "a.yaml", baseline=""),
        Entry("half", "half", "a.yaml", fraction=0.5, baseline=""),
        Entry("tuned", "tuned", "b.yaml", fraction=0.5, init_from="half", baseline="half"),
    ]
    results, out = str(tmp_path / "results"), str(tmp_path / "out")
    calls = []

    def launch(*a):
        return _FakeRun(calls, *a)

    got = run_plan(plan, [0, 1], results, out, launch, jobs=2, log=lambda s: None)
    assert [(n, s) for n, s, _ in calls] == [
        ("ff", 0), ("half", 0), ("tuned", 0), ("ff", 1), ("half", 1), ("tuned", 1)
    ]  # fmt: skip
    inits = {(n, s): init for n, s, init in calls}
    assert inits[("tuned", 1)] == os.path.join(out, "half", "seed1", "model_final.pth")
    assert len(got) == 6 and {r["name"] for r in got} == {"ff", "half", "tuned"}

    # Resume on a machine without the checkpoints: only the fine-tune result is missing, so the
    # parent is trained again for its checkpoint, and its committed result file is kept.
    os.remove(os.path.join(results, "tuned", "seed1.json"))
    committed = os.path.join(results, "half", "seed1.json")
    stamp = os.stat(committed).st_mtime_ns
    shutil.rmtree(out)
    calls.clear()
    run_plan(plan, [0, 1], results, out, launch, jobs=1, log=lambda s: None)
    assert [(n, s) for n, s, _ in calls] == [("half", 1), ("tuned", 1)]
    assert os.stat(committed).st_mtime_ns == stamp
    assert os.path.isfile(os.path.join(out, "half", "seed1", "result.json"))


def test_run_plan_names_the_failed_run_and_keeps_results(tmp_path):
    plan = [Entry("ff", "ff", "a.yaml", baseline=""), Entry("bad", "bad", "b.yaml")]

    class Failing(_FakeRun):
        def __init__(self, calls, entry, *a):
            super().__init__(calls, entry, *a)
            if entry.name == "bad":
                self.returncode = 3

    def launch(*a):
        return Failing([], *a)

    with pytest.raises(RuntimeError, match="bad seed 0 failed \\(exit 3\\).*log.txt"):
        run_plan(plan, [0], str(tmp_path / "r"), str(tmp_path / "o"), launch, log=lambda s: None)
    assert os.path.isfile(tmp_path / "r" / "ff" / "seed0.json")


def _metrics(path, iterations):
    with open(path, "w") as f:
        f.writelines(json.dumps({"iteration": i, "total_loss": 1.0}) + "\n" for i in iterations)


def test_run_folder_resumes_only_the_config_it_started(tmp_path):
    import torch
    from synthetic_comparison.run_one import RUN_CONFIG, prepare_run_folder

    from rpanoptic.engine.demo import demo_config
    from rpanoptic.evaluation.report import read_metrics

    out = str(tmp_path / "run")
    cfg = demo_config(QUICK, out, 4, "cpu", ["SEED", "0"])
    assert prepare_run_folder(cfg) is False  # nothing there yet
    assert open(os.path.join(out, RUN_CONFIG)).read() == cfg.dump()

    torch.save({"model": {}, "iteration": 1}, os.path.join(out, "model_0000001.pth"))
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")
    _metrics(os.path.join(out, "metrics.json"), [0, 1, 2, 3])
    assert prepare_run_folder(cfg) is True
    # iterations 2 and 3 are trained again: their old records go
    assert [r["iteration"] for r in read_metrics(os.path.join(out, "metrics.json"))] == [0, 1]

    other = demo_config(QUICK, out, 4, "cpu", ["SEED", "1"])
    assert prepare_run_folder(other) is False  # another seed: start over, keep the old log
    assert not os.path.exists(os.path.join(out, "last_checkpoint"))
    assert not os.path.exists(os.path.join(out, "metrics.json"))
    assert os.path.isfile(os.path.join(out, "metrics.previous.json"))
    assert open(os.path.join(out, RUN_CONFIG)).read() == other.dump()

    os.remove(os.path.join(out, "model_0000001.pth"))  # named by a pointer but gone
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")
    assert prepare_run_folder(other) is False


@pytest.mark.slow
def test_interrupted_run_resumes_from_its_checkpoint(synthetic_env, tmp_path):
    out, result = str(tmp_path / "run"), str(tmp_path / "seed0.json")
    cmd = ["-m", "synthetic_comparison.run_one", "--config-file", QUICK, "--seed", "0"]
    cmd += ["--result", result, "--output-dir", out, "--device", "cpu", *DATA]
    cmd += ["SOLVER.CHECKPOINT_PERIOD", "2", "DATALOADER.NUM_WORKERS", "0", *SIZES]
    run_python(_with_project(synthetic_env), *cmd)
    with open(result) as f:
        assert json.load(f)["resumed_at"] == 0
    # As if the process had been killed after the checkpoint of iteration 1 (the second)
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")
    os.remove(result)
    run_python(_with_project(synthetic_env), *cmd)
    with open(result) as f:
        run = json.load(f)
    assert run["resumed_at"] == 2 and run["iters"] == 4
    with open(os.path.join(out, "metrics.json")) as f:
        iterations = [json.loads(line)["iteration"] for line in f if line.strip()]
    assert iterations == sorted(set(iterations)) and len(iterations) > 0


def test_step_gains_are_paired_within_runs():
    from synthetic_comparison.tables import step_gains

    def run(seed, at1, at10, at30):
        sweep = {"1": {"PQ": at1}, "10": {"PQ": at10}, "30": {"PQ": at30}}
        return dict(model="rec", seed=seed, trained_timesteps=10, sweep=sweep)

    runs = [run(0, 40.0, 41.0, 41.5), run(1, 42.0, 45.0, 44.0), run(2, 41.0, 42.0, 42.0)]
    runs.append(dict(model="ff", seed=0, trained_timesteps=0, sweep={}))  # no sweep: no row
    rows = {r["gain"]: r for r in step_gains(runs)}
    assert set(rows) == {"N - 1", "3N - N"} and rows["N - 1"]["model"] == "rec"
    d = np.array([1.0, 3.0, 1.0])
    assert rows["N - 1"]["n"] == 3 and rows["N - 1"]["diff"] == pytest.approx(d.mean())
    t = d.mean() / (d.std(ddof=1) / np.sqrt(3))
    assert rows["N - 1"]["p"] == pytest.approx(2 * (1 - scipy_t.cdf(t, df=2)))
    assert rows["3N - N"]["diff"] == pytest.approx(np.mean([0.5, -1.0, 0.0]))


@pytest.mark.slow
def test_report_from_existing_results_names_the_missing_runs(tmp_path):
    from synthetic_comparison.plan import report_existing

    plan = [Entry("ff", "ff", "a.yaml", baseline=""), Entry("rec", "rec", "b.yaml")]
    results = str(tmp_path / "results")
    with pytest.raises(RuntimeError, match="no result file"):
        report_existing(plan, [0, 1], results)
    run_plan(plan, [0, 1], results, str(tmp_path / "out"), lambda *a: _FakeRun([], *a), log=print)
    os.remove(os.path.join(results, "rec", "seed1.json"))
    files, missing = report_existing(plan, [0, 1], results)
    assert missing == ["rec seed 1"]
    with open(files["runs.csv"]) as f:
        assert len(list(csv.DictReader(f))) == 3


def test_costs_are_medians_over_seeds():
    runs = [dict(_fake("rec", s, 40.0), step_s=t) for s, t in enumerate([1.0, 1.1, 3.0])]
    (row,) = summarize(runs)
    assert row["step_s"] == pytest.approx(1.1)  # the slowed third run does not move it


def test_closure_scores_get_their_table_sweep_and_paired_test(tmp_path):
    """On the enclosure scenes the closure scores are tabled, swept, tested against the
    baseline and plotted beside PQ."""
    runs = []
    for seed in range(3):
        ff = dict(_fake("ff", seed, 40.0, False), name="ff", token_closure=50.0 + seed)
        ff.update({"interior_closure": 51.0, "tokens_closed_loop/right": 60.0})
        ff["tokens_open_loop/right"] = 40.0 + 2 * seed
        rec = dict(_fake("rec", seed, 41.0), name="rec", token_closure=60.0 + 2 * seed)
        rec.update({"interior_closure": 70.0, "tokens_closed_loop/right": 80.0})
        rec["tokens_open_loop/right"] = 40.0 + 4 * seed
        for t, values in rec["sweep"].items():
            values.update(token_closure=50.0 + int(t), interior_closure=60.0)
        runs += [ff, rec]
    files = write_comparison(runs, str(tmp_path), {"ff": "", "rec": "ff"}, ("PQ", "token_closure"))
    table = open(files["comparison.md"]).read()
    assert "| ff | 51.0 ± 1.0 | 51.0 ± 0.0 | 60.0 ± 0.0 / 42.0 ± 2.0 |" in table
    assert "| rec | 62.0 ± 2.0 | 70.0 ± 0.0 | 80.0 ± 0.0 / 44.0 ± 4.0 |" in table
    assert "| rec | 51.0 | 52.0 | 53.0 | 55.0 | 60.0 | 70.0 | 80.0 |" in table  # 50 + t
    with open(files["paired_tests.csv"]) as f:
        tests = {r["metric"]: r for r in csv.DictReader(f)}
    assert float(tests["token_closure"]["diff"]) == pytest.approx(11.0)  # 10, 11, 12
    with open(files["step_gains.csv"]) as f:
        gains = [r for r in csv.DictReader(f) if r["metric"] == "token_closure"]
    assert {r["gain"]: float(r["diff"]) for r in gains} == {"N - 1": 9.0, "3N - N": 20.0}
    assert os.path.getsize(files["pq_vs_steps.png"]) > 1000


def test_the_enclosure_plan_trains_what_its_labels_say():
    from synthetic_comparison.plan import ENCLOSURE_PLAN, PLANS

    from rpanoptic.engine.setup import get_rpanoptic_cfg

    root = os.path.dirname(os.path.dirname(PROJECT))
    assert PLANS["enclosure"] is ENCLOSURE_PLAN
    cfgs = {e.name: get_rpanoptic_cfg(os.path.join(root, e.config), list(e.opts))
            for e in ENCLOSURE_PLAN}  # fmt: skip
    assert all(c.DATASETS.TRAIN == ("synthetic_enclosure_train_separated",) for c in cfgs.values())
    assert cfgs["ff_wide"].MODEL.FPN.OUT_CHANNELS > cfgs["ff"].MODEL.FPN.OUT_CHANNELS
    recurrent = {n: (c.MODEL.RECURRENT.GRAD, c.MODEL.RECURRENT.TIMESTEPS) for n, c in cfgs.items()}
    assert recurrent["rfpn_bptt3"] == ("bptt", 3) and recurrent["rfpn_bptt10"] == ("bptt", 10)
    assert recurrent["rfpn_crbp10"] == ("crbp", 10) and recurrent["rmask_crbp10"] == ("crbp", 10)
    assert cfgs["rfpn_crbp10"].MODEL.RFPN.PLACEMENT == "topdown"  # p2 receives the recurrence
    assert cfgs["rmask_crbp10"].MODEL.ROI_MASK_HEAD.NAME.startswith("Recurrent")
    assert all(e.baseline == "ff" for e in ENCLOSURE_PLAN[1:])


def test_each_kind_runs_with_its_fixed_settings_unless_a_flag_overrides():
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def settings(*argv):
        args = script.parse_args(list(argv))
        return args.scene, args.train, args.val, args.iters

    assert settings("--kind", "enclosure") == ("gap=14:20", 2000, 100, 2400)
    assert settings() == ("", 400, 50, 0)  # the curve scenes
    mine = settings("--kind", "enclosure", "--train", "6", "--iters", "0", "--scene", "")
    assert mine == ("", 6, 100, 0)


@pytest.mark.slow
def test_compare_on_the_enclosure_scenes_reports_closure(tmp_path):
    results, out = str(tmp_path / "results"), str(tmp_path / "compare")
    env = _with_project(dict(os.environ, RPANOPTIC_DATASETS=str(tmp_path / "datasets")))
    args = ["--kind", "enclosure", "--scene", "loops=1:2", "--seeds", "0", "--iters", "2"]
    args += ["--configs", "configs/Synthetic/Enclosure/panoptic_fpn_R_18.yaml", "--device", "cpu"]
    args += ["--results-dir", results, "--output-dir", out, *DATA]
    args += ["DATALOADER.NUM_WORKERS", "0", *SIZES]
    run_python(env, SCRIPT, *args)
    with open(os.path.join(results, "panoptic_fpn_R_18", "seed0.json")) as f:
        run = json.load(f)
    assert 0 <= run["token_closure"] <= 100 or np.isnan(run["token_closure"])
    assert run["tokens_no_loop/count"] > 0 and "PQ/enclosed" in run
    assert os.path.isdir(tmp_path / "datasets" / "synthetic_enclosure_loops1-2_train6_val3")
    assert "Closure on the enclosure scenes" in open(os.path.join(results, "comparison.md")).read()

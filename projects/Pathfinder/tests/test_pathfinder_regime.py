"""The paper's-regime experiment (pathfinder.regime): the minimum steps of the geometry, the
kept weights, evaluation under several inference settings (fixed counts and halting), the paired
tests and the zero-shot tables, and the script's report from result files alone."""

import importlib.util
import json
import math
import os
import statistics
import sys

import pytest
import torch
from pathfinder import PathfinderSpec, generate_pathfinder
from pathfinder.compare import MODELS, keep_weights, kept_path, run_comparison
from pathfinder.fixed_point import load_trained
from pathfinder.regime import (
    EQUAL_MEMORY,
    ZERO_SHOT,
    evaluate_settings,
    geometry_rows,
    min_steps,
    path_length,
    zero_shot_rows,
    zero_shot_settings,
)
from pathfinder.regime_report import paired_rows, zero_shot_table
from pathfinder.train import PathfinderRun, evaluate, load_split
from scipy import stats

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = PathfinderRun(
    task="trace", channels=4, kernel_size=3, timesteps=2, neumann_steps=2, batch=4, iters=2,
    checkpoint_period=2,
)  # fmt: skip


def test_minimum_steps_follow_the_path_length_over_two_kernel_radii():
    hard = PathfinderSpec.scaled(32, "hard", 3)
    assert path_length(hard) == pytest.approx(14 * 2.0 + 13 * 1.0)
    assert min_steps(hard, 9) == pytest.approx(41 / 8)
    assert min_steps(hard, 5) == pytest.approx(41 / 4)
    assert min_steps(PathfinderSpec.scaled(32, "medium", 3), 9) == pytest.approx(26 / 8)
    with pytest.raises(ValueError, match="kernel_size=1"):
        min_steps(hard, 1)
    rows = {(r["set"], r["kernel"]): r for r in geometry_rows(32, 3)}
    assert len(rows) == 6 and rows["hard", 9]["N6_x_min"] == round(6 / (41 / 8), 2)
    # The regime's premise: BPTT-6 near the minimum, C-RBP-20 about four times it.
    assert 1.0 < rows["hard", 9]["N6_x_min"] < 1.3 < 3.5 < rows["hard", 9]["N20_x_min"] < 4.0


def test_parts_name_models_of_the_comparison():
    for part in (EQUAL_MEMORY, ZERO_SHOT):
        assert set(part.models) <= set(MODELS) and part.seeds == (0, 1, 2)
    assert MODELS["hgru_crbp_power_k9_n20"]["lcp_vector"] == "power"
    assert (
        MODELS["hgru_bptt_k9_n6"]["kernel_size"] == 9
        and MODELS["hgru_bptt_k9_n6"]["timesteps"] == 6
    )


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    base = tmp_path_factory.mktemp("regime")
    spec = PathfinderSpec(size=24, segments=3, snakes=2, dash=3.0, gap=1.5, margin=2)
    roots = {}
    for name, segments in (("easy", 2), ("medium", 3)):
        roots[name] = str(base / name)
        spec_n = PathfinderSpec(**{**spec.__dict__, "segments": segments})
        generate_pathfinder(roots[name], {"train": 8, "val": 6}, spec_n, seed=0)
    results, output, keep = str(base / "results"), str(base / "output"), str(base / "keep")
    models = ["ff", "hgru_cbptt_power_k9_n10"]
    run_comparison({"medium": roots["medium"]}, TINY, results, output, models, [0], keep=keep,
                   log=lambda line: None)  # fmt: skip
    return roots, results, output, keep


def test_kept_weights_load_as_the_finished_run_without_optimizer_state(kept, tmp_path):
    roots, _, output, keep = kept
    path = kept_path(keep, "medium", "hgru_cbptt_power_k9_n10", 0)
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"run", "iteration", "model"} and saved["iteration"] == TINY.iters
    full = os.path.join(output, "medium", "hgru_cbptt_power_k9_n10_s0", "checkpoint.pth")
    assert os.path.getsize(path) < os.path.getsize(full)
    run = PathfinderRun(**{**TINY.__dict__, **MODELS["hgru_cbptt_power_k9_n10"], "seed": 0})
    a, b = load_trained(run, path, finished=True), load_trained(run, full, finished=True)
    x = load_split(roots["medium"], "val", "trace").x
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="other settings"):
        load_trained(TINY, path)
    broken = str(tmp_path / "broken.pth")
    torch.save({"model": {}}, broken)  # no settings nor iteration: not a training checkpoint
    with pytest.raises(KeyError):
        keep_weights(broken, str(tmp_path / "out.pth"))
    assert not os.path.exists(tmp_path / "out.pth")


def test_fixed_counts_match_the_sweep_and_halting_takes_fewer_steps(kept):
    roots, _, _, keep = kept
    run = PathfinderRun(**{**TINY.__dict__, **MODELS["hgru_cbptt_power_k9_n10"], "seed": 0})
    model = load_trained(run, kept_path(keep, "medium", "hgru_cbptt_power_k9_n10", 0), True)
    val = load_split(roots["medium"], "val", "trace")
    settings = [dict(test_timesteps=t, halt_tol=0.0, test_solver="picard") for t in (3, 12)]
    settings += [
        dict(test_timesteps=12, halt_tol=0.5, test_solver=s) for s in ("picard", "anderson")
    ]
    rows = evaluate_settings(model, val, settings)
    swept = evaluate(model, val, [3, 12])
    for row, t in zip(rows[:2], (3, 12)):
        assert row["accuracy"] == pytest.approx(swept["accuracy"][t])
        assert row["path_iou"] == pytest.approx(swept["path_iou"][t])
        assert row["mean_steps"] == t
    for row in rows[2:]:
        assert 1 <= row["mean_steps"] < 12  # a tolerance of 0.5 stops every sample early
    assert model.recurrence.halt_tol == 0.0 and model.recurrence.test_solver == "picard"
    ff = load_trained(PathfinderRun(**{**TINY.__dict__, **MODELS["ff"]}),
                      os.path.join(kept[2], "medium", "ff_s0", "checkpoint.pth"), True)  # fmt: skip
    (only,) = evaluate_settings(ff, val, settings)
    assert only["mean_steps"] == 0.0 and 0 <= only["accuracy"] <= 1


def test_zero_shot_rows_cover_every_set_and_setting(kept):
    roots, _, _, keep = kept
    path = kept_path(keep, "medium", "hgru_cbptt_power_k9_n10", 0)
    rows = zero_shot_rows("hgru_cbptt_power_k9_n10", 0, path, roots, base=TINY)
    assert len(rows) == len(roots) * len(zero_shot_settings())
    assert {r["eval_set"] for r in rows} == {"easy", "medium"}
    fixed = [r for r in rows if r["halt_tol"] == 0.0]
    assert {r["mean_steps"] for r in fixed} == {float(t) for t in (5, 10, 20, 40, 80, 120)}
    table = zero_shot_table([{k: str(v) for k, v in r.items()} for r in rows])
    assert len(table) == len(rows) and all(t["seeds"] == 1 for t in table)


def _fake_result(folder, model, seed, accuracy, iou):
    run = {**TINY.__dict__, **MODELS[model], "seed": seed}
    n = run["timesteps"] if run["model"] == "hgru" else None
    keys = [str(n), "60"] if n else ["1"]
    result = {"run": run, "params": 10, "saved_mb": 1.0, "step_ms": 1.0}
    result["accuracy"] = {k: accuracy + 0.01 * i for i, k in enumerate(keys)}
    result["path_iou"] = {k: iou for k in keys}
    os.makedirs(os.path.join(folder, "hard"), exist_ok=True)
    with open(os.path.join(folder, "hard", f"{model}_s{seed}.json"), "w") as f:
        json.dump(result, f)


def test_paired_differences_and_p_values_by_hand(tmp_path):
    results = str(tmp_path / "r")
    a = {0: 0.90, 1: 0.80, 2: 0.85}
    b = {0: 0.70, 1: 0.75, 2: 0.60}
    for seed in a:
        _fake_result(results, "hgru_crbp_power_k9_n20", seed, a[seed], 0.5)
        _fake_result(results, "hgru_bptt_k9_n6", seed, b[seed], 0.5)
    _fake_result(results, "ff_large", 0, 0.5, 0.2)
    rows = paired_rows(results)
    first = rows[0]
    assert first["a"] == "hgru_crbp_power_k9_n20 @ n" and first["metric"] == "accuracy"
    diffs = [a[s] - b[s] for s in a]
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    assert first["diff"] == f"{mean:.3f} ± {sd:.3f}" and first["seeds"] == 3
    t = mean / (sd / math.sqrt(3))
    assert first["p"] == pytest.approx(2 * stats.t.sf(abs(t), df=2))
    iou = rows[1]
    assert iou["metric"] == "path_iou" and iou["p"] is None  # no spread
    at60 = rows[2]  # the same models at 60 steps: the fake files add 0.01 to both
    assert at60["a_mean"] == pytest.approx(statistics.mean(a.values()) + 0.01)
    ff = [r for r in rows if r["b"] == "ff_large @ n" and r["metric"] == "accuracy"][0]
    assert ff["seeds"] == 1 and ff["p"] is None


def test_report_only_from_result_files(tmp_path, capsys):
    results = str(tmp_path / "r")
    for seed in (0, 1):
        _fake_result(results, "hgru_crbp_power_k9_n20", seed, 0.8 + seed / 10, 0.5)
        _fake_result(results, "hgru_bptt_k9_n6", seed, 0.7, 0.4 + seed / 10)
    zero = os.path.join(results, "zero_shot")
    os.makedirs(zero)
    row = "model,seed,eval_set,test_timesteps,halt_tol,test_solver,accuracy,mean_steps,path_iou\n"
    lines = [f"hgru_bptt_k9_n10,0,hard,{t},0.0,picard,0.6,{t},0.3" for t in (5, 10, 120)]
    lines += [
        "hgru_bptt_k9_n10,0,hard,120,0.01,anderson,0.6,30,0.3",
        "ff_large,0,hard,5,0.0,picard,0.7,0,0.4",
    ]
    with open(os.path.join(zero, "hgru_bptt_k9_n10_s0.csv"), "w") as f:
        f.write(row + "\n".join(lines) + "\n")
    with open(os.path.join(zero, "ff_large_s1.csv"), "w") as f:  # as evaluate_settings writes it
        f.write("model,seed,eval_set,accuracy,mean_steps,path_iou\nff_large,1,hard,0.75,0.0,0.5\n")
    spec = importlib.util.spec_from_file_location(
        "pathfinder_regime", os.path.join(PROJECT, "regime.py")
    )
    sys.path.insert(0, PROJECT)
    try:
        tool = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tool)
    finally:
        sys.path.remove(PROJECT)
    argv = ["--report-only", "--results", results, "--data-root", str(tmp_path / "none")]
    argv += ["--output", str(tmp_path / "no_checkpoints")]
    assert tool.main(argv) == 0
    report = open(os.path.join(results, "report.md")).read()
    assert "## Geometry" in report and "hgru_crbp_power_k9_n20 @ n" in report
    assert "| hgru_bptt_k9_n10 | hard | t=120 | 1 | 0.600 ± 0.000" in report
    assert "| ff_large | hard | - | 2 | 0.725 ± 0.035" in report  # one row from each file
    assert os.path.getsize(os.path.join(results, "zero_shot.png")) > 0
    assert os.path.isfile(os.path.join(results, "paired_tests.csv"))
    assert tool.main(["--parts", "nope", "--results", results]) == 2


def test_a_run_cut_off_resumes_in_another_session_from_its_saved_partial(
    kept, tmp_path, monkeypatch
):
    """A run stopped after its first checkpoint: save_partial copies that checkpoint next to the
    kept weights; run_comparison on a new output folder (another machine) resumes from it and
    ends with the weights of an uninterrupted run, and the partial copy is removed."""
    from pathfinder.compare import partial_path, save_partial

    roots = kept[0]
    run = PathfinderRun(**{**TINY.__dict__, "iters": 4, "checkpoint_period": 2})
    sets, model = {"medium": roots["medium"]}, "hgru_bptt_k9_n6"
    quiet = dict(log=lambda line: None)
    whole_keep = str(tmp_path / "whole_keep")
    run_comparison(sets, run, str(tmp_path / "r0"), str(tmp_path / "o0"), [model], [0],
                   keep=whole_keep, **quiet)  # fmt: skip
    step, calls = torch.optim.Adam.step, []

    def dying_step(self, *a, **k):  # the third step dies: the checkpoint of iteration 2 is kept
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return step(self, *a, **k)

    keep, results = str(tmp_path / "keep"), str(tmp_path / "r1")
    monkeypatch.setattr(torch.optim.Adam, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run_comparison(sets, run, results, str(tmp_path / "o1"), [model], [0], keep=keep, **quiet)
    monkeypatch.setattr(torch.optim.Adam, "step", step)
    assert save_partial(str(tmp_path / "o1"), keep, sets, [model, "ff"], [0, 1]) == [
        partial_path(keep, "medium", model, 0)
    ]
    lines = []
    run_comparison(sets, run, results, str(tmp_path / "o2"), [model], [0], keep=keep,
                   log=lines.append)  # fmt: skip
    assert any(line.startswith("resume medium/hgru_bptt_k9_n6 seed 0") for line in lines)
    assert not os.path.exists(partial_path(keep, "medium", model, 0))
    a = torch.load(kept_path(whole_keep, "medium", model, 0), weights_only=True)["model"]
    b = torch.load(kept_path(keep, "medium", model, 0), weights_only=True)["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # A finished run has nothing to save.
    assert save_partial(str(tmp_path / "o2"), keep, sets, [model], [0]) == []


def test_status_tells_each_planned_run_by_its_files(tmp_path):
    """plan_status reads every state from the files alone: a result file (trained, all
    iterations), a resumable checkpoint and a committed partial (the furthest counts), a
    zero-shot file, an unreadable checkpoint (named, counted as not started), and the
    core-minutes left by the pilot's step cost."""
    from pathfinder.compare import partial_path
    from pathfinder.regime import Part, plan_status

    results, keep, output = (str(tmp_path / d) for d in ("results", "keep", "output"))
    part = Part("zero_shot", ("medium",), ("ff", "hgru_bptt_k9_n6"), (0, 1))

    def put(path, obj=None, raw=None):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if raw is not None:
            with open(path, "wb") as f:
                f.write(raw)
        elif path.endswith(".pth"):
            torch.save(obj, path)
        else:
            with open(path, "w") as f:
                f.write(obj)

    put(os.path.join(results, "medium", "ff_s0.json"), "{}")
    put(os.path.join(results, "zero_shot", "ff_s0.csv"), "model\nff\n")
    put(kept_path(keep, "medium", "ff", 0), {"iteration": 10000})
    put(os.path.join(output, "medium", "hgru_bptt_k9_n6_s0", "checkpoint.pth"), {"iteration": 3000})
    put(partial_path(keep, "medium", "hgru_bptt_k9_n6", 0), {"iteration": 5000})
    put(os.path.join(output, "medium", "hgru_bptt_k9_n6_s1", "checkpoint.pth"), raw=b"\x80trunc")
    pilot = str(tmp_path / "pilot.csv")
    put(pilot, "model,step_ms\nhgru_bptt_k9_n6,120\n")

    status = plan_status(results, keep, output, [part], pilot_csv=pilot)
    rows = {(r["model"], r["seed"]): r for r in status}
    assert len(rows) == 4
    done = rows["ff", 0]
    assert (done["trained"], done["iteration"], done["iters_left"]) == (True, 10000, 0)
    assert done["weights_kept"] and done["evaluated"] and done["core_min_left"] is None
    assert (rows["ff", 1]["trained"], rows["ff", 1]["iteration"]) == (False, 0)
    assert rows["ff", 1]["evaluated"] is False
    cut = rows["hgru_bptt_k9_n6", 0]
    assert (cut["iteration"], cut["iters_left"]) == (5000, 5000)
    assert cut["core_min_left"] == 10.0  # 5000 steps x 120 ms
    assert cut["problem"] == "" and not cut["weights_kept"]
    bad = rows["hgru_bptt_k9_n6", 1]
    assert bad["iteration"] == 0 and "unreadable" in bad["problem"]
    assert "checkpoint.pth" in bad["problem"] and bad["core_min_left"] == 20.0
    # Outside the zero-shot part there is no evaluation to be done.
    other = Part("equal_memory", ("hard",), ("ff",), (0,))
    assert plan_status(results, keep, output, [other])[0]["evaluated"] is None

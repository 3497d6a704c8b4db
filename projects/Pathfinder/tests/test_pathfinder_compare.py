"""The Pathfinder comparison driver: one result file per (set, model, seed), skipped when there
(resume), a summary whose numbers are the result files' means, and the pictures."""

import json
import os
import statistics

import pytest
import torch
from pathfinder import PathfinderSpec, generate_pathfinder
from pathfinder.compare import (
    memory_vs_steps,
    plot_comparison,
    plot_unfolding,
    run_comparison,
    summarize,
)
from pathfinder.train import PathfinderRun

BASE = PathfinderRun(
    task="trace", channels=8, kernel_size=3, timesteps=2, neumann_steps=2, batch=4, iters=2,
    eval_steps=[1, 2, 4], checkpoint_period=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    base = tmp_path_factory.mktemp("pfc")
    spec = PathfinderSpec(size=24, segments=3, snakes=2, dash=3.0, gap=1.5, margin=2)
    root = str(base / "set")
    generate_pathfinder(root, {"train": 8, "val": 4}, spec, seed=0)
    results, output = str(base / "results"), str(base / "output")
    logs = []
    written = run_comparison(
        {"easy": root}, BASE, results, output, ["ff", "hgru_crbp"], [0, 1], log=logs.append
    )
    return root, results, output, written


def test_each_run_writes_its_result_and_a_rerun_skips_them(compared):
    root, results, output, written = compared
    names = sorted(os.path.basename(p) for p in written)
    assert names == ["ff_s0.json", "ff_s1.json", "hgru_crbp_s0.json", "hgru_crbp_s1.json"]
    result = json.load(open(os.path.join(results, "easy", "hgru_crbp_s1.json")))
    assert result["run"]["grad"] == "crbp" and result["run"]["seed"] == 1
    assert set(result["path_iou"]) == {"1", "2", "4"}
    logs = []
    again = run_comparison(
        {"easy": root}, BASE, results, output, ["ff", "hgru_crbp"], [0, 1], log=logs.append
    )
    assert again == [] and sum(line.startswith("skip") for line in logs) == 4
    with pytest.raises(ValueError, match="unknown models"):
        run_comparison({"easy": root}, BASE, results, output, ["cnn"], [0])


def test_summary_holds_the_means_of_the_result_files(compared):
    _, results, _, _ = compared
    rows = {r["model"]: r for r in summarize(results)}
    assert set(rows) == {"ff", "hgru_crbp"} and rows["ff"]["seeds"] == 2
    runs = [json.load(open(os.path.join(results, "easy", f"hgru_crbp_s{s}.json"))) for s in (0, 1)]
    acc = [r["accuracy"]["2"] for r in runs]  # at the trained N = 2
    assert rows["hgru_crbp"]["accuracy_N"].startswith(f"{statistics.mean(acc):.3f} ± ")
    iou = [r["path_iou"]["4"] for r in runs]  # at the largest count
    assert rows["hgru_crbp"]["path_iou_last"].startswith(f"{statistics.mean(iou):.3f}")
    assert rows["hgru_crbp"]["N / last"] == "2 / 4" and rows["ff"]["N / last"] == "-"
    acc_2n = statistics.mean(r["accuracy"]["4"] for r in runs)  # 2N = 4; 3N = 6 not evaluated
    assert rows["hgru_crbp"]["accuracy_2N"].startswith(f"{acc_2n:.3f}")
    assert rows["hgru_crbp"]["accuracy_3N"] == "-" and rows["ff"]["accuracy_2N"] == "-"
    text = open(os.path.join(results, "summary.md")).read()
    assert text.count("\n") == 4 and "| easy | hgru_crbp | 2 |" in text


def test_pictures(compared, tmp_path):
    from dataclasses import replace

    root, results, output, _ = compared
    files = plot_comparison(results, ["easy"])
    assert files == [os.path.join(results, "easy", "accuracy_vs_steps.png")]
    assert os.path.getsize(files[0]) > 5000
    run = replace(BASE, model="hgru", grad="crbp", seed=0)
    checkpoint = os.path.join(output, "easy", "hgru_crbp_s0", "checkpoint.pth")
    one = plot_unfolding({"crbp": (run, checkpoint)}, root, str(tmp_path / "u.png"), (1, 2))
    seed1 = os.path.join(output, "easy", "hgru_crbp_s1", "checkpoint.pth")
    rows = {"crbp s0": (run, checkpoint), "crbp s1": (replace(run, seed=1), seed1)}
    two = plot_unfolding(rows, root, str(tmp_path / "u2.png"), (1, 2))
    assert os.path.getsize(one) > 2000 and os.path.getsize(two) > os.path.getsize(one)
    with pytest.raises(ValueError, match="other settings"):
        plot_unfolding({"x": (replace(run, seed=1), checkpoint)}, root, str(tmp_path / "v.png"))


def test_accuracy_against_set_orders_sets_by_difficulty(compared, tmp_path):
    import shutil

    _, results, _, _ = compared
    two = str(tmp_path / "two")
    for name in ("hard", "easy"):
        shutil.copytree(os.path.join(results, "easy"), os.path.join(two, name))
    files = plot_comparison(two, ["easy", "hard"])
    assert [os.path.relpath(f, two) for f in files] == [
        os.path.join("easy", "accuracy_vs_steps.png"),
        os.path.join("hard", "accuracy_vs_steps.png"),
        "accuracy_vs_set.png",
    ]
    assert os.path.getsize(files[1]) > 5000


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error(compared, tmp_path):
    from pathfinder.train import run_and_report

    root = compared[0]
    with pytest.raises(ValueError, match="no CUDA device"):
        run_and_report(BASE, root, str(tmp_path / "o"), device="cuda")
    assert not os.path.exists(tmp_path / "o")


def test_script_report_only_and_bad_set(compared, capsys):
    import importlib.util

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        "pathfinder_compare", os.path.join(here, "compare.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    _, results, output, _ = compared
    argv = ["--report-only", "--results", results, "--output", output, "--data-root", output]
    assert tool.main(argv) == 0
    assert "model=hgru_crbp" in capsys.readouterr().out
    assert tool.main(["--sets", "huge", "--results", results]) == 2


def test_memory_vs_steps_grows_with_n_for_bptt_only(compared, tmp_path):
    root, _, _, _ = compared
    rows = memory_vs_steps(BASE, root, str(tmp_path), counts=(2, 8), grads=("bptt", "crbp"))
    saved = {(r["grad"], r["N"]): r["saved_mb"] for r in rows}
    # BPTT keeps every step's graph: about four times as much at N = 8 as at N = 2.
    assert 3.0 < saved["bptt", 8] / saved["bptt", 2] < 4.5
    # C-RBP keeps one step's graph whatever N is, less than BPTT's at N = 2.
    assert saved["crbp", 8] == pytest.approx(saved["crbp", 2], rel=0.01)
    assert saved["crbp", 8] < saved["bptt", 2]
    with open(tmp_path / "memory_vs_steps.csv") as f:
        lines = f.read().splitlines()
    assert lines[0] == "grad,N,saved_mb,step_ms" and len(lines) == 5
    assert (tmp_path / "memory_vs_steps.png").stat().st_size > 1000


@pytest.mark.slow
def test_fixed_point_table_matches_direct_diagnostics(compared, tmp_path):
    from dataclasses import replace

    from pathfinder.compare import MODELS
    from pathfinder.fixed_point import fixed_point_table, load_trained
    from pathfinder.train import load_split

    from rpanoptic.recurrence.diagnostics import fixed_point_residual, spectral_radius

    root, _, output, _ = compared
    checkpoints = os.path.join(output, "easy")
    rows = fixed_point_table(BASE, MODELS, root, checkpoints, str(tmp_path), seeds=(0, 1, 7))
    assert [(r["model"], r["seed"]) for r in rows] == [("hgru_crbp", 0), ("hgru_crbp", 1)]
    run = replace(BASE, **MODELS["hgru_crbp"], seed=1)
    model = load_trained(run, os.path.join(checkpoints, "hgru_crbp_s1", "checkpoint.pth"))
    val = load_split(root, "val", "trace")
    rec = model.recurrence
    for t in (2, 40):  # the trained N and 40
        with torch.no_grad(), rec.using(test_timesteps=t), rec.recording() as record:
            model(val.x)
        residual = fixed_point_residual(rec.cell, record.input, record.state).median().item()
        radius = spectral_radius(rec.cell, record.input, record.state, iters=40).median().item()
        assert rows[1][f"residual_t{t}"] == pytest.approx(residual, rel=1e-5)
        assert rows[1][f"spectral_radius_t{t}"] == pytest.approx(radius, rel=1e-5)
        if t == 2:  # column sums of J at the trained N: dense Jacobian per sample
            h = record.state
            n = h[0].numel()
            sums = []
            for b in range(len(h)):
                jac = torch.autograd.functional.jacobian(
                    lambda s: rec.cell(record.input[b : b + 1], s), h[b : b + 1]
                )
                sums.append(jac.reshape(n, n).sum(0))
            share = (torch.cat(sums) > BASE.lcp_tau).float().mean().item()
            assert 0.01 < share < 0.99  # so that the check can fail
            assert rows[1]["ones_above_tau"] == pytest.approx(share, abs=1e-3)
    # One RBP series per training sample: the fallback share is a fraction, the terms at most K.
    assert 0.0 <= rows[1]["fallback_fraction"] <= 1.0
    assert 0.0 < rows[1]["neumann_terms"] <= BASE.neumann_steps
    with open(tmp_path / "fixed_point.csv") as f:
        assert f.readline().startswith("model,seed,residual_t2,residual_t40,spectral_radius_t2")


def test_checkpoints_from_before_a_setting_existed_load_with_its_default(compared, tmp_path):
    from dataclasses import replace

    from pathfinder.compare import MODELS
    from pathfinder.fixed_point import load_trained

    _, _, output, _ = compared
    run = replace(BASE, **MODELS["hgru_crbp"], seed=0)
    state = torch.load(
        os.path.join(output, "easy", "hgru_crbp_s0", "checkpoint.pth"), weights_only=True
    )
    del state["run"]["lcp_vector"]  # as written before lcp_vector was a setting
    torch.save(state, tmp_path / "old.pth")
    model = load_trained(run, str(tmp_path / "old.pth"))
    assert model.recurrence.lcp_vector == "ones"
    with pytest.raises(ValueError, match="other settings"):
        load_trained(replace(run, **MODELS["hgru_crbp_power"]), str(tmp_path / "old.pth"))
    power = load_trained(replace(run, lcp_vector="power"), _saved(tmp_path, state, "power"))
    assert power.recurrence.lcp_vector == "power"


def test_unfinished_runs_are_not_taken_for_trained_models(compared, tmp_path):
    from dataclasses import replace

    from pathfinder.compare import MODELS
    from pathfinder.fixed_point import fixed_point_table, is_finished, load_trained

    root, _, output, _ = compared
    run = replace(BASE, **MODELS["hgru_crbp"], seed=0)
    done = os.path.join(output, "easy", "hgru_crbp_s0", "checkpoint.pth")
    assert is_finished(run, done) and not is_finished(run, str(tmp_path / "none.pth"))
    state = torch.load(done, weights_only=True)
    state["iteration"] = run.iters - 1  # as a run cut off before its last iteration
    os.makedirs(tmp_path / "easy" / "hgru_crbp_s0")
    cut = str(tmp_path / "easy" / "hgru_crbp_s0" / "checkpoint.pth")
    torch.save(state, cut)
    assert not is_finished(run, cut)
    with pytest.raises(ValueError, match="iteration 1 of 2: its run has not finished"):
        load_trained(run, cut, finished=True)
    assert load_trained(run, cut) is not None  # without the check: any checkpoint of the run
    rows = fixed_point_table(BASE, MODELS, root, str(tmp_path / "easy"), str(tmp_path))
    assert rows == [] and not (tmp_path / "fixed_point.csv").exists()


def _saved(tmp_path, state, vector):
    state = {**state, "run": {**state["run"], "lcp_vector": vector}}
    torch.save(state, tmp_path / f"{vector}.pth")
    return str(tmp_path / f"{vector}.pth")


def test_a_model_trained_at_more_steps_is_summarised_at_its_own_n(tmp_path):
    from pathfinder.compare import MODELS

    longer = dict(MODELS["hgru_crbp_power_n20"])
    assert longer.pop("timesteps") == 20 and longer == MODELS["hgru_crbp_power"]
    os.makedirs(tmp_path / "medium")
    for model, n in (("hgru_crbp_power", 10), ("hgru_crbp_power_n20", 20)):
        for seed in (0, 1):
            counts = sorted({1, n // 2, n, 2 * n, 3 * n, 40})
            acc = {str(c): round(0.5 + c / 200 + seed / 100, 4) for c in counts}
            result = {"run": {"model": "hgru", "timesteps": n, "seed": seed}, "params": 3881,
                      "accuracy": acc, "path_iou": acc}  # fmt: skip
            with open(tmp_path / "medium" / f"{model}_s{seed}.json", "w") as f:
                json.dump(result, f)
    rows = {r["model"]: r for r in summarize(str(tmp_path))}
    assert rows["hgru_crbp_power"]["N / last"] == "10 / 40"
    assert rows["hgru_crbp_power_n20"]["N / last"] == "20 / 60"
    # at N = 20: 0.6 and 0.61; at 2N = 40: 0.7 and 0.71; at 3N = 60: 0.8 and 0.81
    for label, mean in (("N", 0.605), ("2N", 0.705), ("3N", 0.805), ("last", 0.805)):
        assert rows["hgru_crbp_power_n20"][f"accuracy_{label}"].startswith(f"{mean:.3f} ± ")
    assert rows["hgru_crbp_power"]["accuracy_3N"].startswith("0.655 ± ")


def test_result_files_record_what_the_report_needs_without_checkpoints(compared, tmp_path):
    """An hGRU run's result file holds its fixed-point diagnostics and unfolding frames, equal
    to those computed from its checkpoint; the report made from result files alone (no
    checkpoint, as in a later session) gives the same table and picture, and keeps rows of an
    earlier table that nothing else can give."""
    from dataclasses import replace

    from pathfinder.compare import MODELS
    from pathfinder.fixed_point import fixed_point_table, load_trained
    from pathfinder.report import plot_set_unfolding, recorded
    from pathfinder.train import load_split
    from pathfinder.unfolding import draw_unfolding, unfolding_frames

    root, results, output, _ = compared
    checkpoints = os.path.join(output, "easy")
    found = recorded(results, "easy", "fixed_point")
    assert sorted(found) == [("hgru_crbp", 0), ("hgru_crbp", 1)]  # not the feed-forward runs
    from_checkpoints = fixed_point_table(
        BASE, MODELS, root, checkpoints, str(tmp_path / "a"), seeds=(0, 1)
    )
    from_results = fixed_point_table(
        BASE, MODELS, root, str(tmp_path / "none"), str(tmp_path / "b"), recorded=found
    )
    assert len(from_results) == len(from_checkpoints) == 2
    for a, b in zip(from_checkpoints, from_results):
        assert a.keys() == b.keys()
        assert (a["model"], a["seed"]) == (b["model"], b["seed"])
        for key in set(a) - {"model", "seed"}:
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
    # Neither a result nor a checkpoint: the rows already in fixed_point.csv are kept.
    kept = fixed_point_table(BASE, MODELS, root, str(tmp_path / "none"), str(tmp_path / "b"))
    assert [(r["model"], r["seed"]) for r in kept] == [("hgru_crbp", 0), ("hgru_crbp", 1)]
    assert kept[1]["residual_t2"] == pytest.approx(from_checkpoints[1]["residual_t2"], rel=1e-6)

    run = replace(BASE, **MODELS["hgru_crbp"], seed=0)
    model = load_trained(run, os.path.join(checkpoints, "hgru_crbp_s0", "checkpoint.pth"))
    direct = unfolding_frames(model, load_split(root, "val", "trace"))
    stored = recorded(results, "easy", "unfolding")["hgru_crbp", 0]
    assert stored["counts"] == [1, 2, 4, 8, 16, 40] and stored["task"] == "trace"
    assert torch.tensor(stored["frames"]).shape == (6, 24, 24)
    assert torch.tensor(stored["frames"]) == pytest.approx(torch.tensor(direct["frames"]), abs=1e-3)
    path = plot_set_unfolding(
        BASE, results, "easy", root, str(tmp_path / "none"), str(tmp_path / "u.png")
    )
    assert path and os.path.getsize(path) > 2000
    empty = str(tmp_path / "empty")
    os.makedirs(os.path.join(empty, "easy"))
    assert plot_set_unfolding(BASE, empty, "easy", root, str(tmp_path / "none"), path) is None
    with pytest.raises(ValueError, match="different"):
        draw_unfolding({"a": stored, "b": {**stored, "example": 0}}, root, path)


def test_result_files_record_the_cue_reach_and_the_report_draws_it(compared, tmp_path):
    """Every trace-task run records the cue's reach, equal to cue_reach on its checkpoint, at
    1 step for feed-forward models and at 1, N and 40 for hGRUs; the picture is drawn from the
    records alone."""
    from dataclasses import replace

    from pathfinder.compare import MODELS
    from pathfinder.fixed_point import load_trained
    from pathfinder.reach import cue_reach
    from pathfinder.report import plot_set_cue_reach, recorded
    from pathfinder.train import load_split

    root, results, output, _ = compared
    found = recorded(results, "easy", "cue_reach")
    assert sorted(found) == [("ff", 0), ("ff", 1), ("hgru_crbp", 0), ("hgru_crbp", 1)]
    assert set(found["ff", 0]["influence"]) == {"1"}
    assert set(found["hgru_crbp", 1]["influence"]) == {"1", "2", "40"}  # N = 2
    run = replace(BASE, **MODELS["hgru_crbp"], seed=1)
    model = load_trained(run, os.path.join(output, "easy", "hgru_crbp_s1", "checkpoint.pth"))
    direct = cue_reach(model, load_split(root, "val", "trace"), (2,))
    assert found["hgru_crbp", 1]["pixels"] == direct["pixels"]
    for a, b in zip(found["hgru_crbp", 1]["influence"]["2"], direct["influence"][2]):
        assert (a is None and b is None) or a == pytest.approx(b, abs=1e-5)
    none = str(tmp_path / "none")
    path = plot_set_cue_reach(BASE, results, "easy", root, none, str(tmp_path / "r.png"))
    assert path and os.path.getsize(path) > 2000
    label = replace(BASE, task="label")
    assert plot_set_cue_reach(label, results, "easy", root, none, str(tmp_path / "s.png")) is None

"""rpanoptic.utils: atomic writes keep the old file on failure; eval_mode restores the mode;
result files record their provenance; the task dispatch of tools/benchmark.py and analyze.py."""

import csv
import datetime
import json
import os
import subprocess
import sys
import types

import pytest
import torch

from rpanoptic.utils import (
    atomic_write,
    atomic_write_json,
    eval_mode,
    peak_rss_mb,
    provenance,
    run_task,
    write_result_csv,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = str(tmp_path / "sub" / "a.json")
    atomic_write_json(path, {"a": 1})
    assert json.load(open(path)) == {"a": 1}

    def broken(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert json.load(open(path)) == {"a": 1}
    assert os.listdir(tmp_path / "sub") == ["a.json"]  # no temporary file left


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_mode_even_on_error(training):
    model = torch.nn.Sequential(torch.nn.Dropout(0.5)).train(training)
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            assert not model.training and not model[0].training
            raise RuntimeError
    assert model.training is training and model[0].training is training


def test_peak_rss_grows_with_an_allocation():
    before = peak_rss_mb()
    block = torch.ones(64 * 2**20 // 4) + 1  # 64 MB touched
    assert peak_rss_mb() >= before and block.sum() > 0


def test_provenance_names_the_commit_versions_device_and_date():
    import detectron2
    import torchvision

    stamp = provenance("cpu")
    assert stamp["torch"] == torch.__version__ and stamp["torchvision"] == torchvision.__version__
    assert stamp["detectron2"] == detectron2.__version__
    assert (
        stamp["device"].startswith("cpu (")
        and f"{torch.get_num_threads()} threads" in stamp["device"]
    )
    when = datetime.datetime.fromisoformat(stamp["date"])
    assert abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) < 60
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    assert stamp["commit"].split("+")[0] == head.stdout.strip()


def test_result_csv_rows_carry_the_provenance_and_missing_rows_are_an_error(tmp_path):
    path = str(tmp_path / "out" / "r.csv")
    write_result_csv(path, [{"a": 1, "b": 2}, {"a": 3, "b": 4, "c": 5}], device="cpu")
    with open(path) as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames[:3] == ["a", "b", "c"]
    assert reader.fieldnames[3:] == [f"run_{k}" for k in provenance("cpu")]
    assert [r["a"] for r in rows] == ["1", "3"] and rows[0]["c"] == "" and rows[1]["c"] == "5"
    assert {r["run_torch"] for r in rows} == {torch.__version__}
    with pytest.raises(ValueError, match="no rows.*empty.csv"):
        write_result_csv(str(tmp_path / "empty.csv"), [])
    assert not os.path.exists(tmp_path / "empty.csv")


def test_run_task_passes_the_rest_of_the_line_to_the_named_task(monkeypatch, capsys):
    seen = []
    fake = types.ModuleType("fake_task")
    fake.main = lambda argv: seen.append([sys.argv[0], *argv]) or 3
    monkeypatch.setitem(sys.modules, "fake_task", fake)
    tasks = {"go": ("fake_task", "a task"), "other": ("fake_task", "another")}
    assert run_task(tasks, ["go", "--x", "1", "rest"], "prog", "what it does") == 3
    assert seen == [["prog go", "--x", "1", "rest"]]  # the task's --help names it so
    with pytest.raises(SystemExit):
        run_task(tasks, ["nope"], "prog", "what it does")
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_task(tasks, ["--help"], "prog", "what it does")
    listing = capsys.readouterr().out
    assert "go            a task" in listing and "other         another" in listing


def test_every_tool_task_names_a_module_with_main():
    import importlib

    from rpanoptic.analysis import TASKS as ANALYSES
    from rpanoptic.benchmark import TASKS as BENCHMARKS

    for name, (module, _) in {**BENCHMARKS, **ANALYSES}.items():
        assert callable(importlib.import_module(module).main), name

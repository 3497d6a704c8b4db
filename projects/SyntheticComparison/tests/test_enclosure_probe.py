"""The enclosure probe: run names, per-cell labels that follow the scene, the closure score on
hand-made predictions, and a tiny run that writes its result once."""

import json
import os
import sys

import pytest
import torch

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PROJECT)

import enclosure_probe as probe  # noqa: E402

from rpanoptic.data.enclosure_scene import EnclosureSpec  # noqa: E402


def test_run_names_say_what_they_train():
    assert probe.parse_run("hgru_bptt_n20_s4") == {
        "model": "hgru", "grad": "bptt", "steps": 20, "stride": 4, "kernel": 5
    }  # fmt: skip
    assert probe.parse_run("ff_s8_k3") == {
        "model": "ff", "grad": "", "steps": 0, "stride": 8, "kernel": 3
    }  # fmt: skip
    for bad in ("hgru_n20_s4", "ff_s2", "hgru_bptt_n20_s4_x"):
        with pytest.raises(ValueError, match="name it"):
            probe.parse_run(bad)


def test_cell_labels_follow_the_scene():
    spec = EnclosureSpec(size=96, loop_radius=(0.2, 0.3))
    images, labels, interiors = probe.scenes(spec, 12, 0, 4)
    assert images.shape == (12, 3, 96, 96) and labels.shape == interiors.shape == (12, 24, 24)
    assert set(labels.unique().tolist()) <= {-1, 0, 1}
    inside = labels == 1
    assert inside.any() and not inside[interiors == 0].any()  # inside only within loops
    assert not inside[interiors == 2].any()  # never in an open loop
    assert (inside[interiors == 1]).float().mean() > 0.8  # closed-loop ground is inside


def test_closure_is_balanced_over_closed_and_open_loops():
    labels = torch.tensor([[[1, 1, 0, 0, 0, -1]]])
    interiors = torch.tensor([[[1, 1, 2, 2, 0, 2]]])
    right_everywhere = torch.nn.functional.one_hot(labels.clamp(min=0), 2).permute(0, 3, 1, 2)
    assert probe.closure(right_everywhere.float(), labels, interiors)["interior_closure"] == 100
    all_inside = torch.zeros(1, 2, 1, 6)
    all_inside[:, 1] = 1
    scores = probe.closure(all_inside, labels, interiors)
    assert scores["closed_loop_right"] == 100 and scores["open_loop_right"] == 0
    assert scores["interior_closure"] == 50 and scores["cell_accuracy"] == 40


def test_a_tiny_run_writes_its_result_once(tmp_path, capsys):
    args = ["--runs", "hgru_crbp_n3_s8,ff_s8", "--train", "8", "--val", "4", "--iters", "2"]
    args += ["--eval-period", "1", "--size", "96", "--scene", "loop_radius=0.2:0.3"]
    args += ["--results", str(tmp_path), "--batch", "2", "--channels", "8"]
    args += ["--test-sizes", "96,128"]
    assert probe.main(args) == 0
    path = tmp_path / "loop_radius0.2-0.3" / "hgru_crbp_n3_s8_seed0.json"
    result = json.loads(path.read_text())
    assert sorted(result["val"]) == ["3", "6", "9"] and result["params"] > 0
    assert [h[0] for h in result["history"]] == [1, 2]
    assert sorted(result["sizes"]) == ["128", "96"]
    assert sorted(result["sizes"]["128"], key=int) == ["3", "6", "9", "18"]  # N, 2N, 3N, 6N
    weights = torch.load(str(path)[: -len(".json")] + ".pth", weights_only=True)
    assert sum(v.numel() for k, v in weights.items() if "weight" in k or "bias" in k) > 0
    ff = json.loads((tmp_path / "loop_radius0.2-0.3" / "ff_s8_seed0.json").read_text())
    assert ff["params"] >= result["params"] - 200  # at least the hGRU's size, stems alike
    stamp = path.stat().st_mtime_ns
    assert probe.main(args) == 0 and path.stat().st_mtime_ns == stamp
    assert "skip hgru_crbp_n3_s8" in capsys.readouterr().out
    assert probe.main(["--runs", "rnn_s4"]) == 2

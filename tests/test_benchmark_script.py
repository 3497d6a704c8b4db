"""tools/benchmark.py runs end to end on a tiny model and writes its table and plot."""

import csv
import os
import subprocess
import sys

from _detectron import ROOT

TINY = (
    "MODEL.RESNETS.DEPTH 18 MODEL.RESNETS.RES2_OUT_CHANNELS 64 MODEL.RESNETS.NORM GN "
    "MODEL.FPN.NORM GN MODEL.FPN.OUT_CHANNELS 32 MODEL.ROI_MASK_HEAD.CONV_DIM 32 "
    "MODEL.SEM_SEG_HEAD.CONVS_DIM 32 MODEL.HGRU.GN_GROUPS 8 MODEL.RECURRENT.NEUMANN_STEPS 2"
).split()


def test_benchmark_writes_results(tmp_path):
    config = os.path.join(
        ROOT, "configs/COCO-PanopticSegmentation/panoptic_rfpn_R_50_crbp20_1x.yaml"
    )
    argv = ["--config-file", config, "--steps", "1,2", "--grad", "crbp", "--image-size", "64"]
    argv += ["--iters", "1", "--warmup", "0", "--device", "cpu", "--output-dir", str(tmp_path)]
    script = os.path.join(ROOT, "tools", "benchmark.py")
    done = subprocess.run([sys.executable, script, *argv, *TINY], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "crbp train memory max/min over N" in done.stdout
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["grad"], r["timesteps"]) for r in rows] == [
        ("baseline", "-", "0"),
        ("panoptic_rfpn_R_50_crbp20_1x", "crbp", "1"),
        ("panoptic_rfpn_R_50_crbp20_1x", "crbp", "2"),
    ]
    for r in rows:
        assert float(r["train_step_ms"]) > 0 and float(r["infer_img_s"]) > 0
        assert float(r["params_M"]) > 1
    assert float(rows[1]["params_M"]) > float(rows[0]["params_M"])  # the recurrent parameters
    assert (tmp_path / "memory_vs_steps.png").exists() and (tmp_path / "targets.csv").exists()

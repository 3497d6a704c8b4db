"""The fixed model lists of ``tools/benchmark.py model --suite`` and how their rows become ratios to
the feed-forward model (per round with ``--rounds``) and the speed goals (docs/BENCHMARKS.md)."""

import statistics

_SYN, _COCO = "configs/Synthetic/", "configs/COCO-PanopticSegmentation/"
_BPTT, _N = "MODEL.RECURRENT.GRAD bptt MODEL.RECURRENT.TIMESTEPS", "MODEL.RECURRENT.TIMESTEPS"
# K = 4 GMRES products: the fewest that match the Neumann series' error at K = 15
# (tools/benchmark.py solvers, the fresh 256-channel hGRU).
_GMRES4 = "MODEL.RECURRENT.BACKWARD_SOLVER gmres MODEL.RECURRENT.NEUMANN_STEPS 4"
# Halting at 0.01 with Anderson acceleration of the inference steps (recurrence/iterate.py).
_ANDERSON = "MODEL.RECURRENT.TEST_SOLVER anderson MODEL.RECURRENT.HALT_TOL 0.01"
SUITES = {  # name -> (image size, batch, [(label, config, overrides)]); the first is the baseline
    "synthetic": (
        160,
        4,
        [
            ("ff", _SYN + "panoptic_fpn_R_18.yaml", ""),
            ("rfpn_bptt3", _SYN + "panoptic_rfpn_R_18_crbp.yaml", f"{_BPTT} 3"),
            ("rfpn_bptt5", _SYN + "panoptic_rfpn_R_18_crbp.yaml", f"{_BPTT} 5"),
            ("rfpn_crbp10", _SYN + "panoptic_rfpn_R_18_crbp.yaml", ""),
            ("rfpn_crbp20", _SYN + "panoptic_rfpn_R_18_crbp.yaml", f"{_N} 20"),
            (
                "rfpn_crbp10_compile",
                _SYN + "panoptic_rfpn_R_18_crbp.yaml",
                "MODEL.RECURRENT.COMPILE True",
            ),
            (
                "rfpn_crbp10_halt",
                _SYN + "panoptic_rfpn_R_18_crbp.yaml",
                "MODEL.RECURRENT.HALT_TOL 0.01",
            ),
            (
                "rfpn_crbp10_compile_halt",
                _SYN + "panoptic_rfpn_R_18_crbp.yaml",
                "MODEL.RECURRENT.COMPILE True MODEL.RECURRENT.HALT_TOL 0.01",
            ),
            ("rfpn_crbp10_anderson_halt", _SYN + "panoptic_rfpn_R_18_crbp.yaml", _ANDERSON),
            ("rfpn_crbp10_gmres4", _SYN + "panoptic_rfpn_R_18_crbp.yaml", _GMRES4),
            ("rmask_crbp10", _SYN + "panoptic_rmask_R_18_crbp.yaml", ""),
        ],
    ),
    "coco": (
        512,
        2,
        [
            ("ff", _COCO + "panoptic_fpn_R_50_1x.yaml", ""),
            ("rfpn_bptt3", _COCO + "panoptic_rfpn_R_50_crbp20_1x.yaml", f"{_BPTT} 3"),
            ("rfpn_bptt5", _COCO + "panoptic_rfpn_R_50_crbp20_1x.yaml", f"{_BPTT} 5"),
            ("rfpn_crbp10", _COCO + "panoptic_rfpn_R_50_crbp20_1x.yaml", f"{_N} 10"),
            ("rfpn_crbp20", _COCO + "panoptic_rfpn_R_50_crbp20_1x.yaml", ""),
            (
                "rfpn_crbp10_compile",
                _COCO + "panoptic_rfpn_R_50_crbp20_1x.yaml",
                f"{_N} 10 MODEL.RECURRENT.COMPILE True",
            ),
            (
                "rfpn_crbp10_halt",
                _COCO + "panoptic_rfpn_R_50_crbp20_1x.yaml",
                f"{_N} 10 MODEL.RECURRENT.HALT_TOL 0.01",
            ),
            (
                "rfpn_crbp10_compile_halt",
                _COCO + "panoptic_rfpn_R_50_crbp20_1x.yaml",
                f"{_N} 10 MODEL.RECURRENT.COMPILE True MODEL.RECURRENT.HALT_TOL 0.01",
            ),
            (
                "rfpn_crbp10_anderson_halt",
                _COCO + "panoptic_rfpn_R_50_crbp20_1x.yaml",
                f"{_N} 10 {_ANDERSON}",
            ),
            (
                "rfpn_crbp10_gmres4",
                _COCO + "panoptic_rfpn_R_50_crbp20_1x.yaml",
                f"{_N} 10 {_GMRES4}",
            ),
            (
                "rfpn_p3p5_crbp10",
                _COCO + "panoptic_rfpn_R_50_crbp20_1x.yaml",
                f"{_N} 10 MODEL.RFPN.LEVELS ['p3','p4','p5']",
            ),
            ("rmask_crbp10", _COCO + "panoptic_rmask_R_50_crbp20_1x.yaml", f"{_N} 10"),
        ],
    ),
}


def suite_ratios(rows):
    """Each row's training and inference time as ratios to the feed-forward row of the same
    round (``round``, 0 when absent), added to the rows."""
    base = {r.get("round", 0): r for r in rows if r["model"] == rows[0]["model"]}
    for r in rows:
        ff = base[r.get("round", 0)]
        r["train_vs_ff"] = round(r["train_step_ms"] / ff["train_step_ms"], 3)
        r["infer_vs_ff"] = round(ff["infer_img_s"] / r["infer_img_s"], 3)
    return rows


def combine_rounds(rows):
    """One row per model from the rows of several rounds (with ratios): the median of every
    number, and the lowest and highest of each ratio over the rounds (``*_lo``, ``*_hi``)."""
    by_model = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append(r)
    out = []
    for runs in by_model.values():
        row = {}
        for key, value in runs[0].items():
            if key == "round":
                continue
            numbers = [x[key] for x in runs]
            plain = isinstance(value, (int, float)) and not isinstance(value, bool)
            row[key] = round(statistics.median(numbers), 3) if plain else value
        for key in ("train_vs_ff", "infer_vs_ff"):
            row[f"{key}_lo"] = min(x[key] for x in runs)
            row[f"{key}_hi"] = max(x[key] for x in runs)
        row["rounds"] = len(runs)
        out.append(row)
    return out


def suite_targets(rows):
    """Issue 14's goals on the rows' ratios to the feed-forward model (:func:`suite_ratios`,
    computed here when the rows lack them)."""
    if "train_vs_ff" not in rows[0]:
        suite_ratios(rows)
    out = []
    trained = ("rfpn_crbp10", "rfpn_crbp10_compile", "rfpn_crbp10_gmres4")
    goals = {k: ("train_vs_ff", 1.3) for k in trained}
    goals["rfpn_p3p5_crbp10"] = ("train_vs_ff", 1.3)
    goals["rfpn_crbp10_halt"] = ("infer_vs_ff", 1.2)
    goals["rfpn_crbp10_compile_halt"] = ("infer_vs_ff", 1.2)
    goals["rfpn_crbp10_anderson_halt"] = ("infer_vs_ff", 1.2)
    for r in rows:
        if r["model"] in goals:
            key, limit = goals[r["model"]]
            name = f"{r['model']} {key.replace('_vs_ff', '')} time / ff"
            goal = {"target": name, "value": r[key], "limit": f"<= {limit}", "met": r[key] <= limit}
            if f"{key}_lo" in r:  # several rounds: the ratio's lowest and highest
                goal["range"] = f"{r[key + '_lo']}-{r[key + '_hi']}"
            out.append(goal)
    return out

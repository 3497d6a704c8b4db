"""Images per second of tools/predict.py's model call on CPU or GPU, at the trained step count
and with per-sample halting at several tolerances, each also (--anderson M) with Anderson
acceleration and (--compile) with compiled steps (settings timed in alternation on the same
images). Prints a table and writes a CSV.

  python tools/benchmark.py predict --config-file configs/Synthetic/panoptic_rfpn_R_18_crbp.yaml \\
      --input datasets/synthetic_panoptic/val --images 22 --halt-tols 0.01,0.001 \\
      --csv results/benchmarks/predict_speed_cpu.csv --threads 1 \\
      --baseline-config configs/Synthetic/panoptic_fpn_R_18.yaml \\
      --baseline-weights output/compare/ff/seed0/model_final.pth \\
      MODEL.WEIGHTS output/demo/model_final.pth MODEL.DEVICE cpu
"""

import argparse

import torch

from ..engine.setup import get_rpanoptic_cfg
from ..inference import expand_inputs
from .common import write_csv
from .predict_speed import predict_speed, setting_quality


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--input", nargs="+", required=True, help="images, folders or globs")
    p.add_argument("--images", type=int, default=22, help="images to time (2 more warm up)")
    p.add_argument("--halt-tols", default="0.01,0.001", help="halting tolerances to compare")
    p.add_argument(
        "--anderson",
        type=int,
        default=0,
        help="also time every setting with Anderson acceleration of this memory "
        "(MODEL.RECURRENT.TEST_SOLVER anderson, ANDERSON_MEMORY; 0: not)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time every setting with compiled steps (MODEL.RECURRENT.COMPILE True; the "
        "first images, which compile, are among the warm-up ones)",
    )
    p.add_argument(
        "--pq",
        action="store_true",
        help="also evaluate every setting's PQ (and mean steps) on the config's DATASETS.TEST[0]",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--csv", default="", help="where to write the table")
    p.add_argument("--baseline-config", default="", help="also time this (feed-forward) config")
    p.add_argument("--baseline-weights", default="", help="the baseline's weights")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="MODEL.WEIGHTS CKPT and KEY VALUE")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {"no halting": []}
    for tol in [t for t in args.halt_tols.split(",") if t]:
        settings[f"halt_tol {tol}"] = ["MODEL.RECURRENT.HALT_TOL", tol]
    if args.anderson:
        anderson = ["MODEL.RECURRENT.TEST_SOLVER", "anderson"]
        anderson += ["MODEL.RECURRENT.ANDERSON_MEMORY", str(args.anderson)]
        settings.update(
            {f"anderson {args.anderson}, {k}": v + anderson for k, v in list(settings.items())}
        )
    if args.compile:
        compiled = ["MODEL.RECURRENT.COMPILE", "True"]
        settings.update({f"compiled, {k}": v + compiled for k, v in list(settings.items())})
    cfgs = {
        k: get_rpanoptic_cfg(args.config_file, list(args.opts) + v) for k, v in settings.items()
    }
    if args.baseline_config:
        device = ["MODEL.DEVICE", next(iter(cfgs.values())).MODEL.DEVICE]
        weights = ["MODEL.WEIGHTS", args.baseline_weights]
        cfgs["baseline"] = get_rpanoptic_cfg(args.baseline_config, weights + device)
    paths = expand_inputs(args.input)[: args.images]
    rows = predict_speed(cfgs, paths)
    if args.pq:
        quality = setting_quality(cfgs)
        rows = [dict(r, **quality[r["setting"]]) for r in rows]
    device = next(iter(cfgs.values())).MODEL.DEVICE
    print(f"{len(paths)} images on {device}, {torch.get_num_threads()} threads")
    extra = [k for k in ("PQ", "PQ_th", "PQ_st", "eval_steps") if k in rows[0]]
    print("| setting | images/s | s/image | mean steps |" + "".join(f" {k} |" for k in extra))
    print("|---|---|---|---|" + "---|" * len(extra))
    for r in rows:
        speed = f"{r['images_per_s']:.2f} | {r['s_per_image']:.3f}"
        cells = "".join(f" {r[k]:.2f} |" for k in extra)
        print(f"| {r['setting']} | {speed} | {r['steps']:.1f} |{cells}")
    if args.csv:
        write_csv(args.csv, rows)
    return 0

#!/usr/bin/env python
"""Run a trained model on your own images, folders, globs or a video.

Per image, in --output: <name>.png (the panoptic overlay), panoptic/<name>.png + panoptic.json
(COCO panoptic format: score them with panopticapi against ground truth), <name>_unfold.png
with --unfold (the prediction at those step counts), and summary.csv (per image: inference
seconds and the steps each recurrent layer took). A video in gives <stem>.mp4 out.

  python tools/predict.py --config-file configs/Synthetic/panoptic_rfpn_R_18_crbp.yaml \\
      --input datasets/synthetic_panoptic/val --output output/predict \\
      --unfold 1,2,5,10,20 MODEL.WEIGHTS output/demo/model_final.pth
  python tools/predict.py --config-file C --input 'photos/*.jpg' --output out \\
      --timesteps 20 --halt-tol 0.01 MODEL.WEIGHTS W
  python tools/predict.py --config-file C --video-input clip.mp4 --output out MODEL.WEIGHTS W
"""
import argparse
import sys

from detectron2.utils.logger import setup_logger

import rpanoptic  # noqa: F401  (registers rpanoptic's components and the synthetic datasets)
from rpanoptic.engine.setup import get_rpanoptic_cfg
from rpanoptic.evaluation.timestep_sweep import parse_counts
from rpanoptic.inference import PredictOptions, Predictor, expand_inputs, predict_files
from rpanoptic.inference.predictor import predict_video
from rpanoptic.modeling import validate_recurrent_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, help="the config the model was trained with")
    p.add_argument("--input", nargs="+", default=[], help="images, folders or globs")
    p.add_argument("--video-input", default="", help="a video file (OpenCV)")
    p.add_argument("--output", required=True, help="folder for the results")
    p.add_argument("--timesteps", type=int, default=0, help="inference steps (0: the config's)")
    p.add_argument("--halt-tol", type=float, default=None, help="per-sample halting tolerance")
    p.add_argument("--confidence-threshold", type=float, default=None, help="instance score")
    p.add_argument("--unfold", default="", help="step counts of the unfolding strip, e.g. 1,2,5")
    p.add_argument("--device", default="", help="cpu or cuda (default: the config's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="MODEL.WEIGHTS CKPT and KEY VALUE")
    args = p.parse_args(argv)
    if bool(args.input) == bool(args.video_input):
        p.error("pass --input (images, folders, globs) or --video-input (a video), one of them")
    return args


def config(args):
    opts = list(args.opts)
    if args.timesteps:
        opts += ["MODEL.RECURRENT.TEST_TIMESTEPS", str(args.timesteps)]
    if args.halt_tol is not None:
        opts += ["MODEL.RECURRENT.HALT_TOL", str(args.halt_tol)]
    if args.confidence_threshold is not None:
        threshold = str(args.confidence_threshold)
        opts += ["MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", threshold]
        opts += ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", threshold]
    if args.device:
        opts += ["MODEL.DEVICE", args.device]
    cfg = get_rpanoptic_cfg(args.config_file, opts)
    validate_recurrent_config(cfg)
    cfg.freeze()
    return cfg


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="rpanoptic")
    setup_logger(name="detectron2", abbrev_name="d2")
    try:
        cfg = config(args)
        predictor = Predictor(cfg)
        if args.video_input:
            summary = predict_video(predictor, args.video_input, args.output, not args.quiet)
            print(f"Wrote {summary['video']}")
        else:
            paths = expand_inputs(args.input)
            unfold = tuple(parse_counts(args.unfold, "--unfold")) if args.unfold else ()
            options = PredictOptions(unfold=unfold, progress=not args.quiet)
            summary = predict_files(predictor, paths, args.output, options)
            print(f"Wrote overlays, {summary['json']} and {summary['csv']}")
            for path in summary["skipped"]:
                print(f"skipped (unreadable): {path}")
    except (ValueError, FileNotFoundError) as e:
        print(f"predict: {e}", file=sys.stderr)
        return 2
    print(f"{summary['images']} images, {summary['seconds']:.3f} s per image (model only)")
    for layer, steps in summary["steps"].items():
        print(f"  {layer}: {steps:.2f} steps on average")
    return 0


if __name__ == "__main__":
    sys.exit(main())

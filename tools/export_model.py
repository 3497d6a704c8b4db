#!/usr/bin/env python
"""Export a trained model as TorchScript, traced at a fixed number of inference steps, and check
that it gives the eager model's panoptic segmentation on a sample image.

  python tools/export_model.py --config-file configs/Synthetic/panoptic_rfpn_R_18_crbp.yaml \\
      --output output/export/model.ts --sample-image datasets/synthetic_panoptic/val/000000.jpg \\
      --timesteps 10 MODEL.WEIGHTS output/demo/model_final.pth

The exported module maps one resized image tensor (3, H, W; the model's input format) to raw
tensors; rpanoptic.inference.export.postprocess turns them into the output dict of the eager
model (see that module for the order and for why halting cannot be exported).
"""
import argparse
import sys

import rpanoptic  # noqa: F401  (first: registers the components, quiets the imports below)

# isort: split
import torch
from detectron2.data import detection_utils as utils

from rpanoptic.engine.setup import get_rpanoptic_cfg
from rpanoptic.evaluation.report import image_inputs
from rpanoptic.inference import load_weights
from rpanoptic.inference.export import export_traced, load_exported, postprocess
from rpanoptic.modeling import build_model, validate_recurrent_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--output", required=True, help="the TorchScript file to write")
    p.add_argument("--sample-image", default="", help="image to trace and check on")
    p.add_argument("--timesteps", type=int, default=0, help="steps to unroll (0: the config's)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="MODEL.WEIGHTS CKPT and KEY VALUE")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    opts = list(args.opts) + ["MODEL.DEVICE", "cpu"]
    if args.timesteps:
        opts += ["MODEL.RECURRENT.TEST_TIMESTEPS", str(args.timesteps)]
    try:
        cfg = get_rpanoptic_cfg(args.config_file, opts)
        validate_recurrent_config(cfg)
        model = build_model(cfg).eval()
        load_weights(model, cfg.MODEL.WEIGHTS)
        if args.sample_image:
            image = utils.read_image(args.sample_image, format=cfg.INPUT.FORMAT)
        else:
            size = cfg.INPUT.MIN_SIZE_TEST
            image = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8).numpy()
        inputs = image_inputs(cfg, image)
        export_traced(model, inputs["image"], args.output)
    except (ValueError, FileNotFoundError) as e:
        print(f"export: {e}", file=sys.stderr)
        return 2
    exported = load_exported(args.output)
    with torch.no_grad():
        eager = model([inputs])[0]["panoptic_seg"][0]
        size = tuple(inputs["image"].shape[1:])
        raw = exported(inputs["image"])
        mine = postprocess(raw, size, inputs["height"], inputs["width"], cfg)["panoptic_seg"][0]
    same = float((eager == mine).float().mean())
    print(
        f"Wrote {args.output}; its panoptic segmentation equals the eager model's on "
        f"{100 * same:.2f}% of the sample's pixels."
    )
    return 0 if same == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())

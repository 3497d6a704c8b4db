#!/usr/bin/env python
"""Export a trained model at a fixed number of inference steps and check that it gives the
eager model's panoptic segmentation on a sample image.

  python tools/export_model.py --config-file configs/Synthetic/panoptic_rfpn_R_18_crbp.yaml \\
      --output output/export/model.pt2 --sample-image datasets/synthetic_panoptic/val/000000.jpg \\
      --timesteps 10 MODEL.WEIGHTS output/demo/model_final.pth

Formats (--format):
  export       (default) a torch.export program (.pt2): the whole network, NMS included, for
               images of any size over 64 pixels a side; load it with
               rpanoptic.inference.export.load_program or torch.export.load.
  onnx         that program converted to ONNX (needs onnx and onnxscript; the check runs it
               with onnxruntime: pip install -r requirements-dev.txt); load_onnx runs it.
  torchscript  a trace of the eager model (.ts; torch.jit is deprecated upstream);
               load_exported loads it.

Each maps one resized image tensor (3, H, W; the model's input format) to five raw tensors;
rpanoptic.inference.export.postprocess turns them into the eager model's output dict (see that
module for the order and for why halting cannot be exported). The check passes when the
panoptic segmentation is the eager one on every pixel (export, torchscript) or on at least
99.9% of them (onnx: ONNX Runtime's kernels round differently, and a pixel whose class is a
near tie can flip). Exit status: 0 when the check passes, 1 when it does not, 2 when the
export cannot be made.
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
from rpanoptic.inference.export import (
    export_onnx,
    export_program,
    export_traced,
    load_exported,
    load_onnx,
    load_program,
    postprocess,
)
from rpanoptic.modeling import build_model, validate_recurrent_config

FORMATS = {
    "export": (export_program, load_program),
    "onnx": (export_onnx, load_onnx),
    "torchscript": (export_traced, load_exported),
}
# Share of the sample's pixels whose panoptic label must equal the eager model's.
AGREEMENT = {"export": 1.0, "onnx": 0.999, "torchscript": 1.0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--output", required=True, help="the file to write (.pt2, .onnx or .ts)")
    p.add_argument("--format", choices=sorted(FORMATS), default="export", help="default: export")
    p.add_argument("--sample-image", default="", help="image to export and check on")
    p.add_argument("--timesteps", type=int, default=0, help="steps to unroll (0: the config's)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="MODEL.WEIGHTS CKPT and KEY VALUE")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    export, load = FORMATS[args.format]
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
        export(model, inputs["image"], args.output)
        exported = load(args.output)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"export: {e}", file=sys.stderr)
        return 2
    with torch.no_grad():
        eager = model([inputs])[0]["panoptic_seg"][0]
        size = tuple(inputs["image"].shape[1:])
        raw = exported(inputs["image"])
        mine = postprocess(raw, size, inputs["height"], inputs["width"], cfg)["panoptic_seg"][0]
    same = float((eager == mine).float().mean())
    print(
        f"Wrote {args.output} ({args.format}); its panoptic segmentation equals the eager "
        f"model's on {100 * same:.2f}% of the sample's pixels."
    )
    return 0 if same >= AGREEMENT[args.format] else 1


if __name__ == "__main__":
    sys.exit(main())

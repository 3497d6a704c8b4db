"""How much an RFPN's recurrences change the features the heads see.

For each recurrent level p -> p + scale * h_t, and each image, :func:`rfpn_contribution`
reports the size of the recurrent term and of its change between step counts, relative to the
feed-forward level p, in two parts: the whole tensor, and its spatial part (each channel's
spatial mean removed, which is what tells one place from another). A recurrence can be large
and still carry little: a per-channel offset that the heads' normalisation and biases absorb.

From the command line (``tools/analyze.py contribution``; ``--help`` lists the options):

  python tools/analyze.py contribution \\
      --config-file configs/Synthetic/panoptic_rfpn_R_18_crbp.yaml \\
      --input datasets/synthetic_panoptic/val --images 8 \\
      --csv projects/SyntheticComparison/results/diagnosis/contribution_rfpn_crbp10_seed0.csv \\
      MODEL.WEIGHTS output/compare/rfpn_crbp10/seed0/model_final.pth
"""

import argparse
from typing import Dict, List, Sequence

import torch
from detectron2.data import detection_utils as utils

from ..engine.setup import get_rpanoptic_cfg
from ..evaluation.report import image_inputs
from ..inference import expand_inputs, load_weights
from ..modeling import build_model
from ..utils import write_result_csv

__all__ = ["rfpn_contribution"]


def _spatial(v: torch.Tensor) -> torch.Tensor:
    return v - v.mean(dim=(2, 3), keepdim=True)


@torch.no_grad()
def rfpn_contribution(model, images: Sequence[torch.Tensor], counts=(1, 10, 30)) -> List[Dict]:
    """Rows (level, quantity, part, value: the mean over ``images``) for an RFPN model in eval
    mode; ``images`` are preprocessed batches (B, 3, H, W) as the backbone takes them.

    Quantities (each the norm of ``scale *`` the term over the norm of p): ``h_t`` at each
    count t, and ``h_t - h_s`` for consecutive counts s < t."""
    fpn = model.backbone
    if not hasattr(fpn, "rfpn"):
        raise ValueError("rfpn_contribution: the model's backbone is not an RFPN.")
    counts = sorted(set(counts))
    sums: Dict[tuple, float] = {}
    for x in images:
        features = dict(super(type(fpn), fpn).forward(x))  # the feed-forward FPN levels
        for level, layer in fpn.rfpn.items():
            p = features[level]
            states = {}
            for t in counts:
                with layer.recurrence.using(test_timesteps=t):
                    states[t] = layer.scale * layer.recurrence(p)
            terms = {f"h_{t}": states[t] for t in counts}
            for s, t in zip(counts, counts[1:]):
                terms[f"h_{t} - h_{s}"] = states[t] - states[s]
            for name, term in terms.items():
                for part, f in (("whole", lambda v: v), ("spatial", _spatial)):
                    key = (level, name, part)
                    value = (f(term).norm() / f(p).norm().clamp_min(1e-12)).item()
                    sums[key] = sums.get(key, 0.0) + value
    return [
        {"level": k[0], "quantity": k[1], "part": k[2], "value": v / len(images)}
        for k, v in sums.items()
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--input", nargs="+", required=True, help="images, folders or globs")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--counts", default="1,10,30", help="step counts to compare")
    p.add_argument("--csv", default="")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="MODEL.WEIGHTS CKPT and KEY VALUE")
    args = p.parse_args(argv)
    cfg = get_rpanoptic_cfg(args.config_file, list(args.opts) + ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    load_weights(model, cfg.MODEL.WEIGHTS)
    paths = expand_inputs(args.input)[: args.images]
    batches = [
        model.preprocess_image(
            [image_inputs(cfg, utils.read_image(f, format=cfg.INPUT.FORMAT))]
        ).tensor
        for f in paths
    ]
    counts = [int(c) for c in args.counts.split(",")]
    rows = rfpn_contribution(model, batches, counts)
    print(f"{len(paths)} images; norm of scale * term over norm of the feed-forward level p")
    print("| level | term | whole | spatial part |")
    print("|---|---|---|---|")
    for whole in [r for r in rows if r["part"] == "whole"]:
        spatial = next(
            r
            for r in rows
            if r["part"] == "spatial"
            and r[("level")] == whole["level"]
            and r["quantity"] == whole["quantity"]
        )
        print(
            f"| {whole['level']} | {whole['quantity']} | {whole['value']:.3f} | "
            f"{spatial['value']:.3f} |"
        )
    if args.csv:
        fields = ["level", "quantity", "part", "value"]
        write_result_csv(args.csv, [{k: r[k] for k in fields} for r in rows])
    return 0

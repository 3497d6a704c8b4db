"""Where does the gradient go? One training batch through a model in several learning modes:
each parameter group's gradient and weight norms, and how each mode's gradient of the recurrent
cells agrees with a reference mode's (e.g. C-RBP against BPTT with the same N).

Everything random in a training forward (RPN and RoI sampling) is re-seeded before each mode,
so the modes differ only in how they differentiate the recurrence.

From the command line (``tools/analyze.py gradients``; ``--help`` lists the options):

  python tools/analyze.py gradients --config-file configs/Synthetic/panoptic_rfpn_R_18_crbp.yaml
  python tools/analyze.py gradients --config-file C --modes crbp,rbp,bptt --reference bptt \
      MODEL.WEIGHTS output/demo/model_final.pth
"""

import argparse
import contextlib
from typing import Dict, List, Sequence

import torch
from detectron2.data import build_detection_train_loader
from detectron2.utils.events import EventStorage
from torch import nn

from ..data import SceneSpec, ensure_synthetic_dataset
from ..engine.checkpoint import load_weights
from ..engine.setup import get_rpanoptic_cfg
from ..modeling import build_model
from ..modeling.recurrent_config import norm_of, parameter_groups, recurrent_layers
from ..utils import write_result_csv

__all__ = ["gradients_by_mode", "gradient_table"]


def gradients_by_mode(
    model: nn.Module, batch, modes: Sequence[str], lcp_weight: float = 0.0, seed: int = 0
) -> Dict[str, Dict[str, torch.Tensor]]:
    """{mode: {parameter name: gradient}} of sum(losses) + lcp_weight * sum(penalties), for each
    learning mode in ``modes`` ("bptt", "cbptt", "rbp", "crbp"), with the same weights and
    batch. Each recurrent layer's mode is restored at the end."""
    layers = recurrent_layers(model)
    out = {}
    try:
        for mode in modes:
            with contextlib.ExitStack() as stack:
                for layer in layers.values():  # the penalty is added here
                    stack.enter_context(layer.using(grad=mode, lcp_collected=True))
                model.zero_grad(set_to_none=True)
                torch.manual_seed(seed)
                losses = model(batch)
                loss = sum(losses.values())
                penalties = [layer.lcp for layer in layers.values() if layer.lcp is not None]
                if penalties and lcp_weight:
                    loss = loss + lcp_weight * torch.stack(penalties).sum()
                loss.backward()
            out[mode] = {
                n: p.grad.detach().clone()
                for n, p in model.named_parameters()
                if p.grad is not None
            }
    finally:
        model.zero_grad(set_to_none=True)
    return out


def gradient_table(
    model: nn.Module, grads: Dict[str, Dict[str, torch.Tensor]], reference: str
) -> List[Dict]:
    """Rows per (mode, parameter group) and per (mode, recurrent layer): ``grad_norm``,
    ``weight_norm``, their ``ratio``, and against ``grads[reference]``: ``rel_error``
    (||g - g_ref|| / ||g_ref||) and ``cosine``."""
    sets = {f"group:{g}": list(p) for g, p in parameter_groups(model).items()}
    named = dict(model.named_parameters())
    for layer in recurrent_layers(model):
        sets[f"layer:{layer}"] = [n for n in named if n.startswith(f"{layer}.")]
    rows = []
    for mode, g in grads.items():
        for what, names in sets.items():
            names = [n for n in names if n in g]
            if not names:
                continue
            mine = torch.cat([g[n].flatten().double() for n in names])
            weight = norm_of([named[n] for n in names])
            row = {
                "mode": mode,
                "set": what,
                "grad_norm": float(mine.norm()),
                "weight_norm": weight,
                "ratio": float(mine.norm()) / max(weight, 1e-12),
            }
            if reference in grads and all(n in grads[reference] for n in names):
                ref = torch.cat([grads[reference][n].flatten().double() for n in names])
                row["rel_error"] = float((mine - ref).norm() / ref.norm().clamp_min(1e-30))
                row["cosine"] = float(torch.nn.functional.cosine_similarity(mine, ref, dim=0))
            rows.append(row)
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--modes", default="crbp,bptt", help="learning modes to compare")
    p.add_argument("--reference", default="bptt", help="the mode the others are compared to")
    p.add_argument("--seed", type=int, default=0, help="weights, batch and sampling seed")
    p.add_argument("--output", default="output/gradient_check.csv")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = get_rpanoptic_cfg(args.config_file, ["MODEL.DEVICE", "cpu", *args.opts])
    if any(d.startswith("synthetic_panoptic") for d in cfg.DATASETS.TRAIN):
        ensure_synthetic_dataset({"train": 400, "val": 50}, size=SceneSpec.size)
    cfg.DATALOADER.NUM_WORKERS = 0
    torch.manual_seed(args.seed)
    model = build_model(cfg).train()
    if cfg.MODEL.WEIGHTS:
        load_weights(model, cfg)  # weights only, unless unpickling was opted into
    batch = next(iter(build_detection_train_loader(cfg)))
    with EventStorage(0):  # Detectron2's losses log to an event storage
        grads = gradients_by_mode(
            model, batch, args.modes.split(","), cfg.MODEL.RECURRENT.LCP_WEIGHT, args.seed
        )
    rows = gradient_table(model, grads, args.reference)
    print(
        f"{'mode':6s} {'set':45s} {'grad':>10s} {'weight':>10s} {'ratio':>9s} {'rel.err':>8s} cos"
    )
    for r in rows:
        err = f"{r['rel_error']:8.4f} {r['cosine']:.4f}" if "rel_error" in r else ""
        print(
            f"{r['mode']:6s} {r['set']:45s} {r['grad_norm']:10.3e} {r['weight_norm']:10.3e} "
            f"{r['ratio']:9.2e} {err}"
        )
    fields = ["mode", "set", "grad_norm", "weight_norm", "ratio", "rel_error", "cosine"]
    write_result_csv(args.output, [{k: r.get(k, "") for k in fields} for r in rows])
    print("Written:", args.output)
    return 0

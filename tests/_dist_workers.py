"""Functions run in each process of the multi-process tests (started by Detectron2's ``launch``,
which spawns them: they must be importable, so they live here and not in the test files)."""

import json
import os

import torch
from detectron2.utils import comm
from torch import nn

from rpanoptic.engine.setup import get_rpanoptic_cfg
from rpanoptic.engine.trainer import wrap_data_parallel
from rpanoptic.modeling.recurrent_config import build_recurrence


class ToyModel(nn.Module):
    """conv -> hGRU recurrence (from the config keys) -> 1x1 read-out, in float64."""

    def __init__(self, cfg):
        super().__init__()
        torch.manual_seed(0)  # the same initial weights in every process
        self.stem = nn.Conv2d(2, 8, 3, padding=1)
        self.recurrence = build_recurrence(cfg, 8)
        self.head = nn.Conv2d(8, 1, 1)
        self.double()

    def forward(self, x):
        return self.head(self.recurrence(self.stem(x)))


def toy_cfg(grad: str, norm: str):
    opts = ["MODEL.RECURRENT.GRAD", grad, "MODEL.RECURRENT.TIMESTEPS", 5]
    opts += ["MODEL.RECURRENT.NEUMANN_STEPS", 6, "MODEL.HGRU.NORM", norm, "MODEL.HGRU.GN_GROUPS", 2]
    opts += ["MODEL.RECURRENT.LCP_TAU", 0.05]  # small enough that the penalty is active (> 0)
    # A mean makes the penalty of equal halves average to the whole batch's, as DDP averages;
    # the default sum is per process, so DDP would halve it (as in the authors' code).
    opts += ["MODEL.RECURRENT.LCP_REDUCTION", "mean"]
    return get_rpanoptic_cfg("", [str(o) for o in opts])


def toy_loss(model, x, lcp_weight=1.0):
    """Mean squared output + the LCP (here a mean over the state's elements)."""
    loss = model(x).pow(2).mean()
    rec = getattr(model, "module", model).recurrence
    return loss + lcp_weight * rec.lcp if rec.lcp is not None else loss


def toy_inputs():
    return torch.randn(4, 2, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def toy_gradients(grad: str, norm: str, out_dir: str):
    """One DDP backward on this process's half of ``toy_inputs()``; saves the averaged
    gradients (and the step's running statistics) to ``out_dir/rank<r>.pt``."""
    cfg = toy_cfg(grad, norm)
    model = ToyModel(cfg)
    ddp = wrap_data_parallel(model, cfg)
    x = toy_inputs().chunk(comm.get_world_size())[comm.get_rank()]
    toy_loss(ddp, x).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    torch.save(
        {"grads": grads, "buffers": buffers}, os.path.join(out_dir, f"rank{comm.get_rank()}.pt")
    )


def train_and_save(argv, out_dir: str):
    """Train as train_net does (rpanoptic's Trainer); each process saves its parameters."""
    from rpanoptic.engine import Trainer, setup
    from rpanoptic.engine.cli import parse_args

    trainer = Trainer(setup(parse_args(argv)))
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = getattr(trainer.model, "module", trainer.model)
    torch.save(model.state_dict(), os.path.join(out_dir, f"params{comm.get_rank()}.pt"))


def evaluate_and_save(argv, out_dir: str):
    """Evaluate with --eval-only in every process; the main process saves the results."""
    from rpanoptic.engine.cli import main, parse_args

    results = main(parse_args(argv))
    if comm.is_main_process():
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump(results, f)

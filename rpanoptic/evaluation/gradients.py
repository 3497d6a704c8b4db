"""Where does the gradient go? One training batch through a model in several learning modes:
each parameter group's gradient and weight norms, and how each mode's gradient of the recurrent
cells agrees with a reference mode's (e.g. C-RBP against BPTT with the same N).

Everything random in a training forward (RPN and RoI sampling) is re-seeded before each mode,
so the modes differ only in how they differentiate the recurrence.
"""

import contextlib
from typing import Dict, List, Sequence

import torch
from torch import nn

from ..modeling.recurrence import parameter_groups, recurrent_layers

__all__ = ["gradients_by_mode", "gradient_table", "norm_of"]


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


def norm_of(tensors: Sequence[torch.Tensor]) -> float:
    """L2 norm of a list of tensors taken together (0 for none)."""
    if not tensors:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([t.detach().norm() for t in tensors])))


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

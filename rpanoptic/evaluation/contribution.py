"""How much an RFPN's recurrences change the features the heads see.

For each recurrent level p -> p + scale * h_t, and each image, :func:`rfpn_contribution`
reports the size of the recurrent term and of its change between step counts, relative to the
feed-forward level p, in two parts: the whole tensor, and its spatial part (each channel's
spatial mean removed, which is what tells one place from another). A recurrence can be large
and still carry little: a per-channel offset that the heads' normalisation and biases absorb.
"""

from typing import Dict, List, Sequence

import torch

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

"""What a checkpoint holds beyond Detectron2's, so that ``--resume`` continues a run as if it had
never stopped: the random-number states, the seed of the data order (and how far into it the
run is), and the recurrent settings the weights were trained with.

Detectron2 restores the model, optimizer, scheduler and iteration. On its own it restarts the
data order from the beginning and leaves the random-number generators as a new process has them,
so a resumed run sees other images and draws other proposals than the run it continues.
"""

import itertools
import random
from typing import Dict, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = [
    "SkipSampler",
    "check_recurrent_settings",
    "recurrent_settings",
    "rng_state",
    "set_rng_state",
]

RECURRENT_NODES = ("RECURRENT", "HGRU", "RFPN")
# Keys a resumed run may change: they do not change what is trained.
FREE_ON_RESUME = {
    f"MODEL.RECURRENT.{k}"
    for k in (
        "TEST_TIMESTEPS",
        "HALT_TOL",
        "TEST_SOLVER",
        "ANDERSON_MEMORY",
        "CHECK_FINITE",
        "DIAGNOSTICS_PERIOD",
        "COMPILE",
    )
}


def rng_state() -> Dict:
    """The states of Python's, NumPy's and torch's global generators (CUDA's too, when used),
    as tensors and plain lists, which ``torch.load(weights_only=True)`` accepts."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict) -> None:
    """Restore the generators saved by :func:`rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def recurrent_settings(cfg) -> Dict[str, object]:
    """Every key under MODEL.RECURRENT, MODEL.HGRU and MODEL.RFPN, as {"MODEL.X.Y": value}."""
    settings = {}
    for node in RECURRENT_NODES:
        for key, value in cfg.MODEL[node].items():
            settings[f"MODEL.{node}.{key}"] = list(value) if isinstance(value, tuple) else value
    return settings


def check_recurrent_settings(cfg, saved: Optional[Dict], checkpoint: str) -> None:
    """Raise ValueError when ``cfg``'s recurrent settings differ from those saved in a checkpoint.

    A resumed run must train what the checkpoint trained (the number of steps, the learning
    mode, the penalty...). ``saved`` None (a checkpoint from another program) is accepted.
    """
    if saved is None:
        return
    current = recurrent_settings(cfg)
    differ = {
        k: (v, current.get(k))
        for k, v in saved.items()
        if v != current.get(k) and k not in FREE_ON_RESUME
    }
    if differ:
        listed = "; ".join(f"{k}: checkpoint {a!r}, config {b!r}" for k, (a, b) in differ.items())
        overrides = " ".join(f"{k} {a!r}" for k, (a, _) in differ.items())
        raise ValueError(
            f"--resume: checkpoint {checkpoint} was trained with other recurrent settings "
            f"({listed}). Resume with the checkpoint's values (add: {overrides}), or train the "
            "new settings in another OUTPUT_DIR (MODEL.WEIGHTS can start it from this checkpoint)."
        )


class SkipSampler(Sampler):
    """The indices of ``sampler`` after its first ``skip``: for a resumed run, the rest of the
    (infinite) data order the interrupted run was following."""

    def __init__(self, sampler: Sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.skip, None)

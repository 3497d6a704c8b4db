"""Small helpers shared across the package: atomic file writes, a headless pyplot, evaluation
mode for a block, and the process's peak memory."""

import contextlib
import json
import os
import resource
from typing import IO, Callable, Iterator

import torch

__all__ = ["atomic_write", "atomic_write_json", "eval_mode", "peak_rss_mb", "pyplot"]


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = True) -> None:
    """Write ``path`` through ``write(file)`` to a temporary name, then rename it into place:
    readers (and a crash) see the old file or the new one, never a part. The temporary file is
    removed when ``write`` fails."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_json(path: str, data, indent=None) -> None:
    """:func:`atomic_write` of ``data`` as JSON."""
    atomic_write(path, lambda f: json.dump(data, f, indent=indent), binary=False)


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode inside the block, in the mode it had before afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

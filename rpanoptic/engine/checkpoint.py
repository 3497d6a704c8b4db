"""Checkpoints: atomic writes, torch's ``weights_only`` loading, clear errors on bad files."""

import logging
import os
import pickle

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["RPanopticCheckpointer", "load_weights"]

logger = logging.getLogger(__name__)


def _atomic_write(path: str, write) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never a part
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class RPanopticCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that

    - writes checkpoints and ``last_checkpoint`` atomically (a crash while writing never leaves
      a partial file behind);
    - loads with ``torch.load(weights_only=True)`` (torch's default since 2.6) and falls back to
      full unpickling, with a warning naming the file, only for files that need it;
    - raises RuntimeError naming the file when a checkpoint is truncated or corrupt.
    """

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        if not os.path.isdir(self.save_dir):  # a remote path: leave it to the path manager
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        _atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not os.path.isdir(self.save_dir):
            return super().tag_last_checkpoint(last_filename_basename)
        path = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(path, lambda f: f.write(last_filename_basename.encode()))

    def _torch_load(self, f):
        try:
            try:
                return torch.load(f, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e:
                if "weights_only" not in str(e):
                    raise
                logger.warning(
                    "%s holds objects that torch.load(weights_only=True) refuses; loading it with "
                    "full unpickling. Only do this with checkpoints you trust.",
                    f,
                )
                return torch.load(f, map_location="cpu", weights_only=False)
        except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as e:
            raise RuntimeError(
                f"Checkpoint {f} is truncated or corrupt and cannot be loaded ({type(e).__name__}: "
                f"{e}). Delete it (and fix 'last_checkpoint' in its folder to name an intact "
                "checkpoint) or point MODEL.WEIGHTS at another file."
            ) from e


def load_weights(model: torch.nn.Module, cfg, resume: bool = False) -> dict:
    """Load MODEL.WEIGHTS (or, with ``resume``, the last checkpoint in OUTPUT_DIR) into model."""
    return RPanopticCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
        cfg.MODEL.WEIGHTS, resume=resume
    )

"""Checkpoints: atomic writes, loading that never runs code from a file, clear errors on bad files.

Loading policy: ``.pth`` files are read with ``torch.load(weights_only=True)``; ``.pkl`` files
(Detectron2's model zoo, Caffe2/Detectron1 weights) with an unpickler that only builds the types
those files hold (dicts, lists, strings, numbers, NumPy arrays). A file that needs anything else
is refused with an error naming it. Full unpickling, which runs whatever code the file names,
happens only when the user opts in by setting the environment variable ``RPANOPTIC_UNSAFE_PICKLE=1``
(``tools/train_net.py --unsafe-allow-pickle`` sets it), and never as a fallback.
"""

import io
import logging
import os
import pickle

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..utils import atomic_write

__all__ = ["RPanopticCheckpointer", "UNSAFE_PICKLE_ENV", "load_weights", "safe_pickle_load"]

logger = logging.getLogger(__name__)

UNSAFE_PICKLE_ENV = "RPANOPTIC_UNSAFE_PICKLE"

# The globals a model-zoo .pkl needs: NumPy arrays (and their dtypes and scalars) and ordered
# dicts (and bytes, which protocol 2 writes through _codecs.encode). Plain containers, strings
# and numbers need no global at all.
_PKL_GLOBALS = {
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # arrays under pickle protocol 5
    ("numpy._core.numeric", "_frombuffer"),
}


def unsafe_pickle_allowed() -> bool:
    """Whether the user opted in to full unpickling (``RPANOPTIC_UNSAFE_PICKLE=1``)."""
    return os.environ.get(UNSAFE_PICKLE_ENV, "") == "1"


class _WeightsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _PKL_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refused global '{module}.{name}': weight files hold only arrays and containers"
        )


def safe_pickle_load(data: bytes):
    """Unpickle ``data`` (latin1 strings, as Python 2 wrote the model zoo) building only the
    types of weight files; raises pickle.UnpicklingError on any other global."""
    return _WeightsUnpickler(io.BytesIO(data), encoding="latin1").load()


def _refused(filename: str, error: Exception) -> RuntimeError:
    return RuntimeError(
        f"Checkpoint {filename} holds objects a weights-only load refuses ({error}). Loading it "
        "fully would run any code the file names, so it is not done by default. If you trust "
        f"the file, opt in with {UNSAFE_PICKLE_ENV}=1 (or tools/train_net.py "
        "--unsafe-allow-pickle); better, re-save it as a plain state dict."
    )


def _corrupt(filename: str, error: Exception) -> RuntimeError:
    return RuntimeError(
        f"Checkpoint {filename} is truncated, corrupt or not a checkpoint and cannot be loaded "
        f"({type(error).__name__}: {error}). Delete it (and fix 'last_checkpoint' in its folder "
        "to name an intact checkpoint) or point MODEL.WEIGHTS at another file."
    )


class RPanopticCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that

    - writes checkpoints and ``last_checkpoint`` atomically (a crash while writing never leaves
      a partial file behind);
    - loads ``.pth`` with ``torch.load(weights_only=True)`` and ``.pkl`` with an unpickler that
      builds only arrays and containers; never falls back to full unpickling (see the module's
      policy);
    - raises RuntimeError naming the file when a checkpoint is refused, truncated or corrupt.
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
        atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not os.path.isdir(self.save_dir):
            return super().tag_last_checkpoint(last_filename_basename)
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))

    def _load_file(self, filename: str):
        if not filename.endswith(".pkl"):
            return super()._load_file(filename)  # .pth/.pyth: through _torch_load / torch.load
        with open(filename, "rb") as f:
            raw = f.read()
        try:
            data = pickle.loads(raw, encoding="latin1") if unsafe_pickle_allowed() else None
            data = safe_pickle_load(raw) if data is None else data
        except pickle.UnpicklingError as e:
            raise (_refused(filename, e) if "refused global" in str(e) else _corrupt(filename, e))
        except (EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise _corrupt(filename, e) from e
        if not isinstance(data, dict):
            raise _corrupt(filename, TypeError(f"holds a {type(data).__name__}, not a dict"))
        if "model" in data and "__author__" in data:  # Detectron2's model-zoo format
            return data
        blobs = data.get("blobs", data)  # Caffe2 / Detectron1 weights
        weights = {k: v for k, v in blobs.items() if not str(k).endswith("_momentum")}
        return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}

    def _torch_load(self, f):
        unsafe = unsafe_pickle_allowed()
        try:
            return torch.load(f, map_location="cpu", weights_only=not unsafe)
        except pickle.UnpicklingError as e:
            if "weights_only" in str(e) and not unsafe:
                raise _refused(f, str(e).splitlines()[0]) from None
            raise _corrupt(f, e) from e
        except (RuntimeError, EOFError, ValueError, KeyError, IndexError, TypeError) as e:
            raise _corrupt(f, e) from e


def load_weights(model: torch.nn.Module, cfg, resume: bool = False) -> dict:
    """Load MODEL.WEIGHTS (or, with ``resume``, the last checkpoint in OUTPUT_DIR) into model."""
    return RPanopticCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
        cfg.MODEL.WEIGHTS, resume=resume
    )

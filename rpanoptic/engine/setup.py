"""Config set-up shared by the command-line tools."""

import logging
import os

import torch
import yaml
from detectron2.config import get_cfg
from detectron2.engine import default_setup

from ..config import add_rpanoptic_config
from ..modeling.recurrent_config import validate_recurrent_config
from .checkpoint import RPanopticCheckpointer
from .resume import check_recurrent_settings

__all__ = ["setup", "get_rpanoptic_cfg", "merge_config_file", "check_python_config"]

logger = logging.getLogger(__name__)


def merge_config_file(cfg, config_file: str) -> None:
    """Merge a YAML config (and its ``_BASE_`` files) read with a safe YAML loader: tags that
    build Python objects (``!!python/...``) are refused instead of run."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file {config_file} does not exist")
    try:
        cfg.merge_from_file(config_file, allow_unsafe=False)
    except yaml.YAMLError as e:
        raise ValueError(
            f"config file {config_file} (or a _BASE_ it names) is not plain YAML: {e}. Configs are "
            "read with a safe loader; remove Python tags such as !!python/object."
        ) from e


def get_rpanoptic_cfg(config_file: str = "", opts=()):
    """Detectron2's defaults + rpanoptic's keys, then ``config_file`` and ``KEY VALUE`` opts.

    Falls back to the CPU (with a warning) when the config asks for CUDA and none is present.
    """
    cfg = get_cfg()
    add_rpanoptic_config(cfg)
    if config_file:
        merge_config_file(cfg, config_file)
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(
            "MODEL.DEVICE=%s but CUDA is not available: running on the CPU.", cfg.MODEL.DEVICE
        )
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def check_resumable(cfg) -> None:
    """Raise ValueError when the last checkpoint in cfg.OUTPUT_DIR was trained with other
    recurrent settings than ``cfg`` (nothing to check when there is no checkpoint yet)."""
    checkpointer = RPanopticCheckpointer(torch.nn.Module(), cfg.OUTPUT_DIR)
    if not os.path.isdir(cfg.OUTPUT_DIR) or not checkpointer.has_checkpoint():
        return
    path = checkpointer.get_checkpoint_file()
    if not os.path.isfile(path):
        return  # the checkpointer reports a missing file when it loads
    saved = checkpointer._torch_load(path).get("trainer", {})
    check_recurrent_settings(cfg, saved.get("recurrent") if isinstance(saved, dict) else None, path)


def setup(args):
    """Build, check, freeze and log the config of a ``default_argument_parser`` command line.

    OUTPUT_DIR/config.yaml is written (by Detectron2's ``default_setup``) only after the checks
    have passed: a rejected ``--resume`` leaves the config beside the checkpoint as it was.
    """
    cfg = get_rpanoptic_cfg(args.config_file, args.opts)
    validate_recurrent_config(cfg)
    if getattr(args, "resume", False) and not getattr(args, "eval_only", False):
        check_resumable(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


TRUST_CONFIG_ENV = "RPANOPTIC_TRUST_CONFIG"


def check_python_config(path: str, shipped_dir: str, trusted: bool = False) -> None:
    """Raise ValueError for a Python (Lazy) config outside ``shipped_dir`` unless ``trusted``
    (or the environment sets RPANOPTIC_TRUST_CONFIG=1): loading a Python config runs its code,
    and nothing a user passes as a file runs code by default."""
    if not path.endswith(".py") or trusted or os.environ.get(TRUST_CONFIG_ENV) == "1":
        return
    shipped = os.path.abspath(shipped_dir)
    if os.path.commonpath([os.path.abspath(path), shipped]) == shipped:
        return
    raise ValueError(
        f"{path} is a Python config: loading it runs its code. Read it, then pass "
        f"--trust-config (or set {TRUST_CONFIG_ENV}=1) to load it."
    )

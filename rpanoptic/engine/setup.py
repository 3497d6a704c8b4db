"""Config set-up shared by the command-line tools."""

import logging

import torch
from detectron2.config import get_cfg
from detectron2.engine import default_setup

from ..config import add_rpanoptic_config

__all__ = ["setup", "get_rpanoptic_cfg"]

logger = logging.getLogger(__name__)


def get_rpanoptic_cfg(config_file: str = "", opts=()):
    """Detectron2's defaults + rpanoptic's keys, then ``config_file`` and ``KEY VALUE`` opts.

    Falls back to the CPU (with a warning) when the config asks for CUDA and none is present.
    """
    cfg = get_cfg()
    add_rpanoptic_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(
            "MODEL.DEVICE=%s but CUDA is not available: running on the CPU.", cfg.MODEL.DEVICE
        )
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def setup(args):
    """Build, freeze and log the config of a ``default_argument_parser`` command line."""
    cfg = get_rpanoptic_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg

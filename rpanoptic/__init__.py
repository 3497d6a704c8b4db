"""rpanoptic: recurrent Panoptic FPN (hGRU layers trained with C-RBP) for Detectron2.

``import rpanoptic`` registers the Detectron2 components (the ``modeling`` import below does
it); then ``add_rpanoptic_config(cfg)`` adds the config keys.
"""

import warnings

with warnings.catch_warnings():
    # fvcore and detectron2 script a few functions with torch.jit.script when first imported,
    # and torch deprecates that call: warnings about their code that a user cannot act on.
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    import detectron2.modeling  # noqa: F401

from . import data  # noqa: F401  (dataset registration helpers; registers nothing by itself)
from . import modeling  # noqa: F401  (registers build_resnet_rfpn_backbone and the mask head)
from .config import add_rpanoptic_config
from .data import builtin  # noqa: F401  (registers the synthetic_panoptic_* datasets)
from .recurrence import HGRUCell, Recurrence

__version__ = "0.1.0"
__all__ = ["add_rpanoptic_config", "HGRUCell", "Recurrence", "data", "modeling"]

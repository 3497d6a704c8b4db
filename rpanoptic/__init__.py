"""rpanoptic: recurrent Panoptic FPN (hGRU layers trained with C-RBP) for Detectron2."""

from .recurrence import HGRUCell, Recurrence

__version__ = "0.1.0"
__all__ = ["HGRUCell", "Recurrence"]

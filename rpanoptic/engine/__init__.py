"""Training: :class:`Trainer` and :class:`LCPHook`, plus :func:`setup` for command-line tools."""

from .hooks import LCPHook
from .setup import setup
from .trainer import Trainer, wrap_data_parallel

__all__ = ["LCPHook", "Trainer", "setup", "wrap_data_parallel"]

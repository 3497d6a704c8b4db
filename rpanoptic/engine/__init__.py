"""Training: :class:`Trainer`, :class:`LCPHook` and :class:`ParameterStatsHook`, plus
:func:`setup` for command-line tools."""

from .hooks import LCPHook, ParameterStatsHook
from .setup import setup
from .trainer import Trainer, wrap_data_parallel

__all__ = ["LCPHook", "ParameterStatsHook", "Trainer", "setup", "wrap_data_parallel"]

"""Evaluation helpers: the timestep sweep (PQ against inference steps in one data pass)."""

from .timestep_sweep import parse_counts, run_sweep, timestep_sweep, write_sweep

__all__ = ["parse_counts", "run_sweep", "timestep_sweep", "write_sweep"]

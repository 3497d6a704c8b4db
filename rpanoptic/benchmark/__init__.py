"""Benchmarks of the engine and of whole models (``tools/benchmark.py TASK``): each module is one
task with its own options (``main(argv)``), its tables printed and written as CSV and plots.

Counted quantities (FLOPs, kernels, bytes kept for backward) stand beside timed ones, and times
are compared as ratios measured in the same run, since the machines they run on are shared.
"""

# task name: (module, one line). The order is the order of ``tools/benchmark.py --help``.
TASKS = {
    "engine": ("rpanoptic.benchmark.engine", "one recurrence: memory and time against N and mode"),
    "solvers": ("rpanoptic.benchmark.solvers", "backward solvers: gradient error and step time"),
    "model": ("rpanoptic.benchmark.model", "whole models against the feed-forward baseline"),
    "cost": ("rpanoptic.benchmark.cost", "the cost table: FLOPs, kernels, memory, time ratios"),
    "predict": ("rpanoptic.benchmark.predict", "images per second of the predictor, with halting"),
    "fixed-point": ("rpanoptic.benchmark.fixed_point", "a trained model's distance to h*"),
    "profile": ("rpanoptic.benchmark.profile", "a training step's time by engine phase"),
    "levers": ("rpanoptic.benchmark.levers", "fused, compiled and batched variants of a step"),
    "neumann": ("rpanoptic.benchmark.neumann", "fewer Neumann terms: time saved, error paid"),
    "lcp-memory": ("rpanoptic.benchmark.lcp_memory", "where a C-RBP step's CUDA memory goes"),
}

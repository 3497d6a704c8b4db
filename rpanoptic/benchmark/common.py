"""Pieces shared by the benchmark scripts: isolated runs, timing, peak RSS, tables and CSV
files."""

import multiprocessing as mp
import os
import statistics
import sys
import time

from ..utils import peak_rss_mb  # noqa: F401  (re-exported for the benchmarks)
from ..utils import write_result_csv


def run_configurations(fn, tasks, device: str, desc: str = "configurations"):
    """fn(*task) for each task with a progress bar. On CPU each task runs in a fresh spawned
    process, because a process's peak RSS cannot be reset; on GPU they run in this process."""
    from tqdm import tqdm

    rows = []
    with tqdm(total=len(tasks), desc=desc, file=sys.stderr) as bar:
        if device == "cpu":
            with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
                for row in pool.imap(_Star(fn), tasks):
                    rows.append(row)
                    bar.update()
        else:
            for task in tasks:
                rows.append(fn(*task))
                bar.update()
    return rows


class _Star:
    """Picklable ``lambda task: fn(*task)`` for Pool.imap."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, task):
        return self.fn(*task)


def timed(fn, warmup, iters, sync):
    """Median wall time of ``fn()`` in seconds over ``iters`` calls after ``warmup`` calls."""
    times = []
    for i in range(warmup + iters):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_csv(path: str, rows) -> None:
    """Write a list of dicts (one per row) to ``path`` with the run's provenance columns
    (:func:`rpanoptic.utils.write_result_csv`), making its folder."""
    write_result_csv(path, rows)


def save_tables(outdir: str, rows, targets) -> None:
    """Print rows and targets as tables; write results.csv and targets.csv to outdir."""
    from tabulate import tabulate

    for name, data in (("results.csv", rows), ("targets.csv", targets)):
        if data:
            write_csv(os.path.join(outdir, name), data)
    print(tabulate(rows, headers="keys", tablefmt="github"))
    if targets:
        print()
        print(tabulate(targets, headers="keys", tablefmt="github"))

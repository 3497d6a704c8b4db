"""Small helpers shared across the package: atomic file writes, a headless pyplot, evaluation
mode for a block, the process's peak memory, the provenance a result file records, and the
subcommand dispatch of the ``tools/`` commands that have several tasks."""

import argparse
import contextlib
import csv
import datetime
import importlib
import json
import os
import platform
import resource
import subprocess
import sys
from typing import IO, Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch

__all__ = [
    "atomic_write",
    "atomic_write_json",
    "eval_mode",
    "peak_rss_mb",
    "provenance",
    "pyplot",
    "run_task",
    "write_result_csv",
]


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = True) -> None:
    """Write ``path`` through ``write(file)`` to a temporary name, then rename it into place:
    readers (and a crash) see the old file or the new one, never a part. The temporary file is
    removed when ``write`` fails."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_json(path: str, data, indent=None) -> None:
    """:func:`atomic_write` of ``data`` as JSON."""
    atomic_write(path, lambda f: json.dump(data, f, indent=indent), binary=False)


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode inside the block, in the mode it had before afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _source_commit() -> str:
    """The commit of the source checkout this package runs from ("+dirty" when it has
    uncommitted changes), or "" outside a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        run = dict(cwd=root, capture_output=True, text=True, timeout=10)
        head = subprocess.run(["git", "rev-parse", "HEAD"], **run)
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def provenance(device: Optional[str] = None) -> Dict[str, str]:
    """What a result file records about the run that made it: the source commit, the versions of
    Python, torch, torchvision and detectron2, the device (``device``, or CUDA's first device
    when available, else the CPU) with the CPU threads, and the date (UTC, ISO 8601)."""

    def version(module: str) -> str:
        try:
            return importlib.import_module(module).__version__
        except (ImportError, AttributeError):
            return ""

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and torch.cuda.is_available():
        where = torch.cuda.get_device_name(torch.device(device))
    else:
        where = f"cpu ({platform.machine()})"
    return {
        "commit": _source_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": version("torchvision"),
        "detectron2": version("detectron2"),
        "device": f"{where}, {torch.get_num_threads()} threads",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_result_csv(path: str, rows: Sequence[Dict], device: Optional[str] = None) -> None:
    """Write result rows (dicts; the first's keys are the header) to ``path`` as CSV, atomically,
    each row followed by the :func:`provenance` columns, so that the file says what made it."""
    if not rows:
        raise ValueError(f"write_result_csv: no rows to write to {path}")
    stamp = {f"run_{key}": value for key, value in provenance(device).items()}
    fields = list(rows[0]) + [k for r in rows for k in r if k not in rows[0]]
    fields = list(dict.fromkeys(fields)) + list(stamp)

    def write(f):
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({**row, **stamp} for row in rows)

    atomic_write(path, write, binary=False)


def run_task(
    tasks: Dict[str, Tuple[str, str]], argv: Optional[Sequence[str]], prog: str, description: str
) -> int:
    """Run one task of a command with subcommands: ``tasks`` maps a task's name to (module,
    one-line help); the named module's ``main(rest_of_argv)`` runs and its return is the exit
    status. ``prog TASK --help`` shows the task's own options."""
    listing = "\n".join(f"  {name:13s} {text}" for name, (_, text) in tasks.items())
    p = argparse.ArgumentParser(
        prog=prog,
        description=f"{description}\n\ntasks:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("task", choices=list(tasks), metavar="TASK", help="one of the tasks below")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the task's options (TASK --help)")
    args = p.parse_args(argv)
    module = importlib.import_module(tasks[args.task][0])
    program = sys.argv[0]
    sys.argv[0] = f"{prog} {args.task}"  # what the task's own --help and errors call it
    try:
        return module.main(args.args) or 0
    finally:
        sys.argv[0] = program

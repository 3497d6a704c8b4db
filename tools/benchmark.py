#!/usr/bin/env python
"""Benchmarks of the recurrence engine and of whole models (logic in ``rpanoptic.benchmark``).

  python tools/benchmark.py --help                         # the tasks
  python tools/benchmark.py engine --shapes mask,fpn      # one recurrence against N
  python tools/benchmark.py model --suite synthetic        # whole models against feed-forward
  python tools/benchmark.py TASK --help                    # a task's options
"""
import sys

import rpanoptic  # noqa: F401  (registers rpanoptic's components, also in spawned workers)
from rpanoptic.benchmark import TASKS
from rpanoptic.utils import run_task

if __name__ == "__main__":
    sys.exit(run_task(TASKS, sys.argv[1:], "tools/benchmark.py", __doc__.splitlines()[0]))

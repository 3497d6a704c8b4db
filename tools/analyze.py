#!/usr/bin/env python
"""Analyses of a model's recurrences (logic in ``rpanoptic.analysis``).

  python tools/analyze.py --help                           # the tasks
  python tools/analyze.py gradients --config-file configs/Synthetic/panoptic_rfpn_R_18_crbp.yaml
  python tools/analyze.py TASK --help                      # a task's options
"""
import sys

import rpanoptic  # noqa: F401  (registers rpanoptic's components and the synthetic datasets)
from rpanoptic.analysis import TASKS
from rpanoptic.utils import run_task

if __name__ == "__main__":
    sys.exit(run_task(TASKS, sys.argv[1:], "tools/analyze.py", __doc__.splitlines()[0]))

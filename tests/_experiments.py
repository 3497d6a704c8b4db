"""Shared by the tests of the experiment drivers: the tiny data and schedule they use, and
running a script of tools/ (the ``synthetic_env`` fixture of conftest.py provides the data)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = "configs/quick_schedules/panoptic_rfpn_R_18_crbp_instant_test.yaml"
DATA = ["--train", "6", "--val", "3", "--size", "128"]
SIZES = ["INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128"]
SIZES += ["INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128"]


def run_tool(env, script, *args):
    """Run tools/``script`` with ``args`` in ``env``; assert that it succeeds."""
    return run_python(env, os.path.join(ROOT, "tools", script), *args)


def run_python(env, *args):
    """Run ``python args`` from the repository root in ``env``; assert that it succeeds."""
    cmd = [sys.executable, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done

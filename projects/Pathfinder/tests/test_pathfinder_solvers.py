"""projects/Pathfinder/solvers.py: the solver benchmark on a trained Pathfinder hGRU names a bad
model and a missing checkpoint."""

import importlib.util
import os
import sys

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "pathfinder_solvers", os.path.join(PROJECT, "solvers.py")
    )
    sys.path.insert(0, PROJECT)  # the script imports its sibling compare.py, as when run
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(PROJECT)
    return module


def test_the_solver_benchmark_names_a_bad_pathfinder_model_and_a_missing_checkpoint(tmp_path):
    import pytest

    tool = _load_script()
    with pytest.raises(SystemExit, match=r"'hgru_nope:0'.*MODEL:SEED.*hgru_crbp_power_n20"):
        tool.main(["--pathfinder", "hgru_nope:0"])
    with pytest.raises(SystemExit, match="MODEL:SEED"):
        tool.main(["--pathfinder", "hgru_crbp"])
    with pytest.raises(
        SystemExit, match="no checkpoint .*checkpoint.pth.*projects/Pathfinder/compare.py"
    ):
        tool.main(["--pathfinder", "hgru_crbp:0", "--checkpoints", str(tmp_path)])

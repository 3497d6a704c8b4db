"""python -m rpanoptic.env: reports versions, and names what is missing."""

import importlib
import subprocess
import sys

import pytest
import torch

from rpanoptic import env


@pytest.mark.slow
def test_env_reports_versions():
    out = subprocess.run(
        [sys.executable, "-m", "rpanoptic.env"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert f"torch           {torch.__version__}" in out.stdout
    assert "detectron2._C" in out.stdout and "cuda available" in out.stdout


def test_env_names_the_missing_piece(monkeypatch, capsys):
    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "panopticapi":
            raise ImportError("No module named 'panopticapi'")
        return real(name, *a, **k)

    monkeypatch.setattr(env.importlib, "import_module", fake)
    assert env.main() == 1
    err = capsys.readouterr().err
    assert "missing panopticapi" in err and "make test" in err

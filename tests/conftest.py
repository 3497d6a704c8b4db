import os

import pytest
import torch

from rpanoptic.data import SceneSpec, generate_synthetic_panoptic


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def synthetic_env(tmp_path_factory):
    """A process environment whose datasets root holds a tiny synthetic dataset."""
    root = tmp_path_factory.mktemp("datasets")
    folder = str(root / "synthetic_panoptic")
    generate_synthetic_panoptic(folder, {"train": 6, "val": 3}, spec=SceneSpec(size=128))
    return dict(os.environ, RPANOPTIC_DATASETS=str(root))

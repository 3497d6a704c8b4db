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


@pytest.fixture
def event_storage():
    """A Detectron2 EventStorage around the test (its losses and hooks log to one)."""
    from detectron2.utils.events import EventStorage

    with EventStorage(0) as storage:
        yield storage

import os
import shutil

import pytest
import torch

from rpanoptic.data import SceneSpec, generate_synthetic_panoptic
from rpanoptic.data.synthetic import synthetic_folder


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def synthetic_env(tmp_path_factory):
    """A process environment whose datasets root holds a tiny synthetic dataset: in the default
    folder (what ``import rpanoptic`` registers) and in the folder of its counts (what the
    tools' ``ensure_synthetic_dataset`` of ``_experiments.DATA`` looks for)."""
    root = tmp_path_factory.mktemp("datasets")
    folder = str(root / "synthetic_panoptic")
    counts, spec = {"train": 6, "val": 3}, SceneSpec(size=128)
    generate_synthetic_panoptic(folder, counts, spec=spec)
    shutil.copytree(folder, synthetic_folder(counts, spec, str(root)))
    return dict(os.environ, RPANOPTIC_DATASETS=str(root))


@pytest.fixture
def event_storage():
    """A Detectron2 EventStorage around the test (its losses and hooks log to one)."""
    from detectron2.utils.events import EventStorage

    with EventStorage(0) as storage:
        yield storage

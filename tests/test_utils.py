"""rpanoptic.utils: atomic writes keep the old file on failure; eval_mode restores the mode."""

import json
import os

import pytest
import torch

from rpanoptic.utils import atomic_write, atomic_write_json, eval_mode, peak_rss_mb


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = str(tmp_path / "sub" / "a.json")
    atomic_write_json(path, {"a": 1})
    assert json.load(open(path)) == {"a": 1}

    def broken(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert json.load(open(path)) == {"a": 1}
    assert os.listdir(tmp_path / "sub") == ["a.json"]  # no temporary file left


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_mode_even_on_error(training):
    model = torch.nn.Sequential(torch.nn.Dropout(0.5)).train(training)
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            assert not model.training and not model[0].training
            raise RuntimeError
    assert model.training is training and model[0].training is training


def test_peak_rss_grows_with_an_allocation():
    before = peak_rss_mb()
    block = torch.ones(64 * 2**20 // 4) + 1  # 64 MB touched
    assert peak_rss_mb() >= before and block.sum() > 0

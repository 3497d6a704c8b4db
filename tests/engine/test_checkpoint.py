"""Checkpoints: atomic writes, weights-only loading (full unpickling only on opt-in), truncated
files named in the error."""

import os

import pytest
import torch
from torch import nn

from rpanoptic.engine.checkpoint import UNSAFE_PICKLE_ENV, RPanopticCheckpointer


class Blob:
    def __init__(self, value):
        self.value = value


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4))


def test_save_is_loadable_with_weights_only_and_tags_last(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(1, 3, 8, 8)).sum().backward()
    opt.step()
    ckpt = RPanopticCheckpointer(model, str(tmp_path), optimizer=opt)
    ckpt.save("model_0000009", iteration=9)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]  # no temp
    data = torch.load(tmp_path / "model_0000009.pth", weights_only=True)
    assert data["iteration"] == 9 and "optimizer" in data

    fresh = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4))
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    loaded = RPanopticCheckpointer(fresh, str(tmp_path), optimizer=fresh_opt).resume_or_load(
        "", resume=True
    )
    assert loaded["iteration"] == 9
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh_opt.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


def test_truncated_checkpoint_names_the_file(tmp_path):
    model = _model()
    RPanopticCheckpointer(model, str(tmp_path)).save("model_final")
    path = tmp_path / "model_final.pth"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        RuntimeError, match=r"model_final\.pth is truncated, corrupt or not a checkpoint"
    ):
        RPanopticCheckpointer(_model(), str(tmp_path)).resume_or_load("", resume=True)


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = _model()
    ckpt = RPanopticCheckpointer(model, str(tmp_path))
    ckpt.save("model_final", iteration=1)
    before = (tmp_path / "model_final.pth").read_bytes()

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save("model_final", iteration=2)
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]


def test_objects_refused_by_weights_only_need_the_unsafe_opt_in(tmp_path, monkeypatch):
    monkeypatch.delenv(UNSAFE_PICKLE_ENV, raising=False)
    model = _model()
    path = tmp_path / "foreign.pth"
    torch.save({"model": model.state_dict(), "extra": Blob(3)}, path)  # refused by weights_only
    with pytest.raises(RuntimeError, match=r"foreign\.pth holds objects a weights-only load"):
        RPanopticCheckpointer(_model(), str(tmp_path)).load(str(path))
    monkeypatch.setenv(UNSAFE_PICKLE_ENV, "1")
    loaded = RPanopticCheckpointer(_model(), str(tmp_path)).load(str(path))
    assert loaded["extra"].value == 3
    torch.testing.assert_close(model[0].weight, _model()[0].weight)

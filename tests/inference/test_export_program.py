"""torch.export and ONNX export at a fixed step count: the exported RFPN and recurrent-mask-head
programs give the eager model's outputs on the image exported on, on another of another size
and on one without detections; halting, other models, missing and damaged files are refused
with errors that name them."""

import warnings

import pytest
import torch
from _detectron import RFPN, RMASK, tiny_cfg
from torch import nn

from rpanoptic.inference.export import (
    ExportPanoptic,
    export_onnx,
    export_program,
    load_onnx,
    load_program,
    postprocess,
)
from rpanoptic.modeling import build_model, recurrent_layers

KEEP_ALL = [
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    0.0,
    "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT",
    1,
]
KEEP_ALL += ["MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", 0.0]


def _images():
    """The image to export on (96 x 128) and another of another size (128 x 96)."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 96, 128, generator=g) * 255, torch.rand(3, 128, 96, generator=g) * 255


def _both(model, run, image, cfg):
    """The eager model's output dict and the exported one's for ``image``."""
    h, w = image.shape[1:]
    with torch.no_grad():
        eager = model([{"image": image, "height": h, "width": w}])[0]
        return eager, postprocess(run(image), (h, w), h, w, cfg)


def _export_quietly(export, load, model, image, path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export(model, image, path)
        run = load(path)
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    return run


# The shipped COCO RFPN layout, tiny: p3-p5 in the top-down path, narrower than the FPN.
TOPDOWN = ("MODEL.RFPN.LEVELS", ["p3", "p4", "p5"], "MODEL.RFPN.WIDTHS", [8, 16, 32])
TOPDOWN += ("MODEL.RFPN.PLACEMENT", "topdown")


@pytest.mark.parametrize("config, extra", [(RFPN, ()), (RFPN, TOPDOWN), (RMASK, ())])
@pytest.mark.slow
def test_exported_program_equals_eager(config, extra, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg(config, "MODEL.RECURRENT.TEST_TIMESTEPS", 2, *KEEP_ALL, *extra)
    model = build_model(cfg).eval()
    exported_on, other = _images()
    path = str(tmp_path / "model.pt2")
    program = _export_quietly(export_program, load_program, model, exported_on, path)
    assert all(rec.check_finite for rec in recurrent_layers(model).values())  # restored
    for image in (exported_on, other):
        eager, mine = _both(model, program, image, cfg)
        assert len(eager["instances"]) > 0
        torch.testing.assert_close(mine["sem_seg"], eager["sem_seg"])
        torch.testing.assert_close(mine["instances"].scores, eager["instances"].scores)
        torch.testing.assert_close(
            mine["instances"].pred_boxes.tensor, eager["instances"].pred_boxes.tensor
        )
        assert torch.equal(mine["instances"].pred_classes, eager["instances"].pred_classes)
        torch.testing.assert_close(mine["instances"].pred_masks, eager["instances"].pred_masks)
        assert torch.equal(mine["panoptic_seg"][0], eager["panoptic_seg"][0])
        assert mine["panoptic_seg"][1] == eager["panoptic_seg"][1]


@pytest.mark.slow
def test_exported_program_without_detections(tmp_path):
    # No score passes 1.0: NMS keeps nothing and the recurrent mask head gets no RoI.
    cfg = tiny_cfg(
        RMASK, "MODEL.RECURRENT.TEST_TIMESTEPS", 2, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 1.0
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image, _ = _images()
    program = _export_quietly(
        export_program, load_program, model, image, str(tmp_path / "model.pt2")
    )
    eager, mine = _both(model, program, image, cfg)
    assert len(eager["instances"]) == len(mine["instances"]) == 0
    assert mine["instances"].pred_masks.shape[1:] == (96, 128)
    torch.testing.assert_close(mine["sem_seg"], eager["sem_seg"])
    assert torch.equal(mine["panoptic_seg"][0], eager["panoptic_seg"][0])
    assert mine["panoptic_seg"][1] == eager["panoptic_seg"][1]


@pytest.mark.slow
def test_onnx_export_agrees_with_eager(tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    cfg = tiny_cfg(RMASK, "MODEL.RECURRENT.TEST_TIMESTEPS", 2, *KEEP_ALL)
    model = build_model(cfg).eval()
    exported_on, other = _images()
    run = _export_quietly(export_onnx, load_onnx, model, exported_on, str(tmp_path / "m.onnx"))
    for image in (exported_on, other):
        eager, mine = _both(model, run, image, cfg)
        # ONNX Runtime's kernels round differently from PyTorch's
        assert len(mine["instances"]) == len(eager["instances"]) > 0
        assert torch.equal(mine["instances"].pred_classes, eager["instances"].pred_classes)
        torch.testing.assert_close(mine["sem_seg"], eager["sem_seg"], atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(
            mine["instances"].scores, eager["instances"].scores, atol=1e-4, rtol=1e-4
        )
        same = (mine["panoptic_seg"][0] == eager["panoptic_seg"][0]).float().mean()
        assert same >= 0.999


def test_program_export_refuses_halting_and_bad_files(tmp_path):
    cfg = tiny_cfg(RFPN, "MODEL.RECURRENT.HALT_TOL", 0.01)
    model = build_model(cfg)
    image = torch.rand(3, 64, 64)
    for export, name in ((export_program, "m.pt2"), (export_onnx, "m.onnx")):
        with pytest.raises(ValueError, match=r"halting.*backbone.rfpn.p2.recurrence.*HALT_TOL 0"):
            export(model, image, str(tmp_path / name))
        assert not (tmp_path / name).exists()
    with pytest.raises(FileNotFoundError, match="exported program .*nope.pt2 does not exist"):
        load_program(str(tmp_path / "nope.pt2"))
    with pytest.raises(FileNotFoundError, match="ONNX model .*nope.onnx does not exist"):
        load_onnx(str(tmp_path / "nope.onnx"))
    (tmp_path / "bad.pt2").write_bytes(b"not a program")
    with pytest.raises(ValueError, match="bad.pt2 is not a torch.export program"):
        load_program(str(tmp_path / "bad.pt2"))


def test_damaged_onnx_file_is_named(tmp_path):
    pytest.importorskip("onnxruntime")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.onnx is not an ONNX model"):
        load_onnx(str(tmp_path / "bad.onnx"))


def test_export_covers_panoptic_fpn_only():
    with pytest.raises(ValueError, match="meta architecture Module.*RPN.*ROI heads NoneType"):
        ExportPanoptic(nn.Module())

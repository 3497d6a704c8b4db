"""Export at a fixed step count: the traced RFPN and recurrent-mask-head models give the eager
model's outputs (on the traced image and on another of another size), without a warning;
halting is refused."""

import warnings

import pytest
import torch
from _detectron import RFPN, RMASK, tiny_cfg

from rpanoptic.inference.export import export_traced, load_exported, postprocess
from rpanoptic.modeling import build_model

KEEP_ALL = [
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    0.0,
    "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT",
    1,
]
KEEP_ALL += ["MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", 0.0]


@pytest.mark.parametrize("config", [RFPN, RMASK])
@pytest.mark.slow
def test_exported_model_equals_eager(config, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg(config, "MODEL.RECURRENT.TEST_TIMESTEPS", 4, *KEEP_ALL)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    traced_on = torch.rand(3, 96, 128, generator=g) * 255
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_traced(model, traced_on, str(tmp_path / "model.ts"))
        exported = load_exported(str(tmp_path / "model.ts"))
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    for image in (traced_on, torch.rand(3, 128, 96, generator=g) * 255):
        h, w = image.shape[1:]
        with torch.no_grad():
            eager = model([{"image": image, "height": h, "width": w}])[0]
            mine = postprocess(exported(image), (h, w), h, w, cfg)
        assert len(eager["instances"]) > 0
        torch.testing.assert_close(mine["sem_seg"], eager["sem_seg"])
        torch.testing.assert_close(mine["instances"].scores, eager["instances"].scores)
        torch.testing.assert_close(mine["instances"].pred_masks, eager["instances"].pred_masks)
        assert torch.equal(mine["panoptic_seg"][0], eager["panoptic_seg"][0])
        assert mine["panoptic_seg"][1] == eager["panoptic_seg"][1]


def test_export_refuses_halting_and_missing_files(tmp_path):
    cfg = tiny_cfg(RFPN, "MODEL.RECURRENT.HALT_TOL", 0.01)
    with pytest.raises(ValueError, match=r"halting.*backbone.rfpn.p2.recurrence.*HALT_TOL 0"):
        export_traced(build_model(cfg), torch.rand(3, 64, 64), str(tmp_path / "m.ts"))
    assert not (tmp_path / "m.ts").exists()
    with pytest.raises(FileNotFoundError, match="nope.ts does not exist"):
        load_exported(str(tmp_path / "nope.ts"))

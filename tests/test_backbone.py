"""build_basic_resnet_fpn_backbone: detectron2's R18/R34 RetinaNet backbone at any width."""
import pytest
import torch

import focal_rpn
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone


def _cfg(*opts):
    cfg = get_cfg()
    focal_rpn.add_focal_rpn_config(cfg)
    cfg.merge_from_file("configs/quick_retinanet_R18.yaml")
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def test_default_width_has_the_parameters_of_detectrons_r18_backbone():
    ours = build_backbone(
        _cfg("MODEL.BACKBONE.NAME", "build_basic_resnet_fpn_backbone",
             "MODEL.RESNETS.STEM_OUT_CHANNELS", 64, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64)
    )
    stock = build_backbone(
        _cfg("MODEL.BACKBONE.NAME", "build_retinanet_resnet_fpn_backbone",
             "MODEL.RESNETS.STEM_OUT_CHANNELS", 64, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64)
    )
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    stock_shapes = {k: tuple(v.shape) for k, v in stock.state_dict().items()}
    assert ours_shapes == stock_shapes
    ours.load_state_dict(stock.state_dict())
    ours.eval(), stock.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = ours(x), stock(x)
    assert a.keys() == b.keys() == {"p3", "p4", "p5", "p6", "p7"}
    for k in a:
        torch.testing.assert_close(a[k], b[k])


@pytest.mark.parametrize("depth,stem,res2", [(18, 16, 16), (34, 8, 24)])
def test_narrow_widths_give_p3_to_p7_with_the_fpn_width(depth, stem, res2):
    cfg = _cfg("MODEL.BACKBONE.NAME", "build_basic_resnet_fpn_backbone",
               "MODEL.RESNETS.DEPTH", depth, "MODEL.RESNETS.STEM_OUT_CHANNELS", stem,
               "MODEL.RESNETS.RES2_OUT_CHANNELS", res2, "MODEL.FPN.OUT_CHANNELS", 32)
    backbone = build_backbone(cfg)
    assert backbone.bottom_up.output_shape()["res5"].channels == res2 * 8
    assert backbone.bottom_up.stem.out_channels == stem
    out = backbone(torch.randn(2, 3, 128, 128))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p3": (2, 32, 16, 16), "p4": (2, 32, 8, 8), "p5": (2, 32, 4, 4),
        "p6": (2, 32, 2, 2), "p7": (2, 32, 1, 1),
    }


def test_bottleneck_depth_is_refused_with_the_key_and_the_allowed_values():
    cfg = _cfg("MODEL.BACKBONE.NAME", "build_basic_resnet_fpn_backbone",
               "MODEL.RESNETS.DEPTH", 50)
    with pytest.raises(ValueError, match=r"MODEL.RESNETS.DEPTH=50 .*\[18, 34\]"):
        build_backbone(cfg, ShapeSpec(channels=3))

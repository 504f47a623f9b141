"""The installation is real: stock detectron2 models train and infer on CPU, and the C++ op
stand-in answers detectron2's environment report and fails clearly for the missing ops."""
import copy

import pytest
import torch

import detectron2
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.events import EventStorage

import focal_rpn
from tiny_models import batched_inputs


def test_versions():
    major, minor = (int(x) for x in detectron2.__version__.split(".")[:2])
    assert (major, minor) >= (0, 6)
    assert focal_rpn.__version__


@pytest.mark.parametrize(
    "zoo_config",
    ["COCO-Detection/retinanet_R_50_FPN_1x.yaml", "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"],
)
def test_stock_model_zoo_model_trains_and_infers_on_cpu(zoo_config):
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(zoo_config))  # the zoo configs are installed
    cfg.merge_from_list(
        ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", 18,
         "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.FPN.OUT_CHANNELS", 32,
         "MODEL.RETINANET.NUM_CLASSES", 3, "MODEL.ROI_HEADS.NUM_CLASSES", 3,
         "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
         "INPUT.MIN_SIZE_TEST", 96, "INPUT.MAX_SIZE_TEST", 96]
    )
    model = build_model(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001)
    inputs = batched_inputs()
    with EventStorage():
        losses = model(copy.deepcopy(inputs))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        outputs = model(inputs)
    assert len(outputs) == len(inputs) and "instances" in outputs[0]


def test_environment_report_works():
    report = collect_env_info()  # every stock train_net.py calls this at start-up
    assert "detectron2" in report


def _c_extension():
    try:
        from detectron2 import _C
    except ImportError:
        return None
    return _C


@pytest.mark.skipif(_c_extension() is None, reason="this detectron2 has no _C module at all "
                    "(detectron2 main built without C++, whose own fallbacks raise on use); the "
                    "_C stand-in is tools/install_detectron2.py's, for v0.6")
def test_missing_cpp_op_raises_a_clear_error():
    _C = _c_extension()
    if not _C.__file__.endswith(".py"):
        pytest.skip("official detectron2 with compiled C++ ops is installed")
    from detectron2.structures import RotatedBoxes, pairwise_iou_rotated

    boxes = RotatedBoxes(torch.tensor([[10.0, 10.0, 4.0, 4.0, 0.0]]))
    with pytest.raises(RuntimeError, match=r"'box_iou_rotated' is unavailable.*rotated boxes"):
        pairwise_iou_rotated(boxes, boxes)

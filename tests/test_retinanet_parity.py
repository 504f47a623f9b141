"""FocalRetinaNet (sigmoid) against detectron2's own RetinaNet, and its resumable normaliser."""
import copy

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from tiny_models import batched_inputs, tiny_cfg, tiny_model


# The parity tests compare the loss and inference code of the two in the same memory layout
# (the "auto" default makes FocalRetinaNet channels-last on CPU; the layout is tested below)
# and with the same convolutions: "auto" Winograd takes whichever path it times faster, so the
# path, and with it the rounding, can change from run to run (a CI run on a loaded machine got
# boxes 5e-5 px from stock's); tests/test_winograd.py checks Winograd against F.conv2d.
PLAIN = ["MODEL.FOCAL_RETINANET.CHANNELS_LAST", False, "MODEL.FOCAL_RETINANET.WINOGRAD", False]


def stock_and_focal_with_same_weights():
    focal = tiny_model("retinanet_R50.yaml", PLAIN)
    stock_cfg = tiny_cfg("retinanet_R50.yaml", ["MODEL.META_ARCHITECTURE", "RetinaNet"])
    stock = build_model(stock_cfg)
    assert type(stock).__name__ == "RetinaNet"
    stock.load_state_dict(
        {k: v for k, v in focal.state_dict().items() if k != "loss_normalizer"}, strict=True
    )
    return stock, focal


def test_same_losses_as_stock_retinanet_over_several_steps():
    stock, focal = stock_and_focal_with_same_weights()
    stock.train()
    focal.train()
    for step in range(3):  # several steps: the EMA normaliser must evolve identically
        inputs = batched_inputs(num_boxes=2 + step, seed=step)
        with EventStorage():
            stock_losses = stock(copy.deepcopy(inputs))
            focal_losses = focal(copy.deepcopy(inputs))
        assert stock_losses.keys() == focal_losses.keys()
        for key in stock_losses:
            torch.testing.assert_close(focal_losses[key], stock_losses[key], rtol=1e-5, atol=1e-6)
    # and the gradients agree
    sum(stock_losses.values()).backward()
    sum(focal_losses.values()).backward()
    torch.testing.assert_close(
        focal.head.cls_score.weight.grad, stock.head.cls_score.weight.grad, rtol=1e-4, atol=1e-7
    )


def test_same_detections_as_stock_retinanet():
    stock, focal = stock_and_focal_with_same_weights()
    # Make the detector confident somewhere so that detections are not empty.
    with torch.no_grad():
        focal.head.cls_score.bias.fill_(0.5)
        stock.head.cls_score.bias.fill_(0.5)
    stock.eval()
    focal.eval()
    inputs = batched_inputs()
    with torch.no_grad():
        expected = stock(inputs)
        actual = focal(inputs)
    for e, a in zip(expected, actual):
        e, a = e["instances"], a["instances"]
        assert len(a) == len(e) > 0
        torch.testing.assert_close(a.pred_boxes.tensor, e.pred_boxes.tensor)
        torch.testing.assert_close(a.scores, e.scores)
        assert torch.equal(a.pred_classes, e.pred_classes)


def test_checkpoints_load_both_ways(tmp_path):
    stock, focal = stock_and_focal_with_same_weights()
    DetectionCheckpointer(focal, save_dir=str(tmp_path)).save("focal")
    DetectionCheckpointer(stock, save_dir=str(tmp_path)).save("stock")

    fresh_stock = build_model(tiny_cfg("retinanet_R50.yaml", ["MODEL.META_ARCHITECTURE", "RetinaNet"]))
    DetectionCheckpointer(fresh_stock).load(str(tmp_path / "focal.pth"))
    fresh_focal = tiny_model("retinanet_R50.yaml", seed=1)
    DetectionCheckpointer(fresh_focal).load(str(tmp_path / "stock.pth"))
    for name, tensor in stock.state_dict().items():
        torch.testing.assert_close(fresh_stock.state_dict()[name], tensor)
        torch.testing.assert_close(fresh_focal.state_dict()[name], tensor)
    # a strict load of a stock state dict keeps the initial normaliser
    fresh_focal.load_state_dict(stock.state_dict(), strict=True)
    assert fresh_focal.loss_normalizer.item() == 100.0


def test_loss_normalizer_is_saved_and_restored(tmp_path):
    model = tiny_model("retinanet_R50.yaml").train()
    with EventStorage():
        for step in range(2):
            model(batched_inputs(num_boxes=4, seed=step))
    trained_value = model.loss_normalizer.item()
    assert trained_value != 100.0, "normaliser did not move"
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("ckpt")
    resumed = tiny_model("retinanet_R50.yaml", seed=3)
    assert resumed.loss_normalizer.item() == 100.0
    DetectionCheckpointer(resumed).resume_or_load(str(tmp_path / "ckpt.pth"), resume=True)
    assert resumed.loss_normalizer.item() == trained_value


# ------------------------------------------------------------------ channels-last memory format
def _plain_and_channels_last_with_same_weights():
    plain = tiny_model("retinanet_R50.yaml", PLAIN)
    fast = tiny_model("retinanet_R50.yaml", ["MODEL.FOCAL_RETINANET.CHANNELS_LAST", True])
    fast.load_state_dict(plain.state_dict(), strict=True)
    return plain, fast


def test_channels_last_model_keeps_weights_and_features_channels_last():
    _, fast = _plain_and_channels_last_with_same_weights()
    conv_weights = [p for p in fast.parameters() if p.dim() == 4]
    assert conv_weights and all(
        p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights
    )
    images = fast.preprocess_image(batched_inputs())
    assert images.tensor.is_contiguous(memory_format=torch.channels_last)
    features = fast.backbone(images.tensor)
    for name, f in features.items():
        assert f.is_contiguous(memory_format=torch.channels_last), name


def test_channels_last_gives_the_same_losses_gradients_and_detections():
    plain, fast = _plain_and_channels_last_with_same_weights()
    plain.train()
    fast.train()
    inputs = batched_inputs(num_boxes=4, seed=3)
    with EventStorage():
        plain_losses = plain(copy.deepcopy(inputs))
        fast_losses = fast(copy.deepcopy(inputs))
    for key in plain_losses:
        torch.testing.assert_close(fast_losses[key], plain_losses[key], rtol=1e-5, atol=1e-6)
    sum(plain_losses.values()).backward()
    sum(fast_losses.values()).backward()
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    plain.eval()
    fast.eval()
    with torch.no_grad():
        plain.head.cls_score.bias.fill_(0.5)
        fast.head.cls_score.bias.fill_(0.5)
        expected = plain(inputs)
        actual = fast(inputs)
    # NHWC convolutions sum in another order: float32 rounding, not a different model
    for e, a in zip(expected, actual):
        e, a = e["instances"], a["instances"]
        assert len(a) == len(e) > 0
        torch.testing.assert_close(a.pred_boxes.tensor, e.pred_boxes.tensor, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(a.scores, e.scores, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", [1, "yes", 0.5])
def test_bad_channels_last_value_names_the_key(bad):
    cfg = tiny_cfg("retinanet_R50.yaml")
    cfg.MODEL.FOCAL_RETINANET.CHANNELS_LAST = bad
    with pytest.raises(ValueError, match="MODEL.FOCAL_RETINANET.CHANNELS_LAST.*auto"):
        build_model(cfg)


def _is_channels_last(model) -> bool:
    weights = [p for p in model.parameters() if p.dim() == 4]
    return all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)


@pytest.mark.parametrize("value", [None, "auto"])
def test_auto_from_the_config_is_channels_last_on_cpu(value):
    model = tiny_model("retinanet_R50.yaml", ["MODEL.FOCAL_RETINANET.CHANNELS_LAST", value])
    assert model.channels_last is True and _is_channels_last(model)
    assert model.preprocess_image(batched_inputs()).tensor.is_contiguous(memory_format=torch.channels_last)


def test_auto_from_the_config_keeps_the_layout_for_a_gpu_device():
    from focal_rpn import FocalRetinaNet

    cfg = tiny_cfg("retinanet_R50.yaml")
    cfg.MODEL.DEVICE = "cuda:0"
    assert FocalRetinaNet.from_config(cfg)["channels_last"] is False


def test_auto_built_directly_settles_at_the_first_forward_on_its_device(caplog):
    from focal_rpn import FocalRetinaNet

    cfg = tiny_cfg("retinanet_R50.yaml", PLAIN)
    args = FocalRetinaNet.from_config(cfg)
    args["channels_last"] = "auto"  # as a LazyConfig builds it: the device is not known yet
    model = FocalRetinaNet(**args)
    assert model.channels_last == "auto" and not _is_channels_last(model)
    model.eval()
    with caplog.at_level("INFO", logger="focal_rpn.modeling.retinanet"), torch.no_grad():
        model(batched_inputs())
    assert model.channels_last is True and _is_channels_last(model)
    assert any("channels_last 'auto' on cpu -> True" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_leaves_the_head_outputs_alone(activation, channels_last):
    """A forward hook that keeps the head's outputs still holds logits after inference
    (detectron2's in-place sigmoid_ would turn channels-last ones into probabilities)."""
    model = tiny_model(
        "retinanet_R50.yaml",
        ["MODEL.FOCAL_RETINANET.CHANNELS_LAST", channels_last,
         "MODEL.FOCAL_RETINANET.ACTIVATION", activation],
    ).eval()
    kept = []
    model.head.register_forward_hook(
        lambda module, args, output: kept.append(
            (output, [[t.clone() for t in level] for level in output])
        )
    )
    with torch.no_grad():
        model(batched_inputs())
    (outputs, copies), = kept
    assert outputs[0][0].is_contiguous(memory_format=torch.channels_last) == channels_last
    assert outputs[0][0].min() < 0  # logits, with the prior's negative bias
    for level_outputs, level_copies in zip(outputs, copies):
        for tensor, copy_at_hook_time in zip(level_outputs, level_copies):
            assert torch.equal(tensor, copy_at_hook_time)

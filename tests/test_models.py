"""End-to-end checks of every model config: build via the registry, train, eval, edge cases."""
import math

import pytest
import torch

from detectron2.modeling import META_ARCH_REGISTRY, PROPOSAL_GENERATOR_REGISTRY
from detectron2.utils.events import EventStorage

import focal_rpn
from tiny_models import MODEL_CONFIGS, NUM_CLASSES, batched_inputs, tiny_cfg, tiny_model

CONFIG_IDS = [name for name, _, _ in MODEL_CONFIGS]


def test_import_registers_both_models():
    assert META_ARCH_REGISTRY.get("FocalRetinaNet") is focal_rpn.FocalRetinaNet
    assert PROPOSAL_GENERATOR_REGISTRY.get("FocalRPN") is focal_rpn.FocalRPN


def test_add_config_defaults_and_idempotence():
    cfg = tiny_cfg("retinanet_R50.yaml")
    assert cfg.MODEL.FOCAL_RPN.ALPHA == 0.25
    assert cfg.MODEL.FOCAL_RPN.GAMMA == 2.0
    assert cfg.MODEL.FOCAL_RPN.LOSS_WEIGHT == 0.1
    assert cfg.MODEL.FOCAL_RPN.ACTIVATION == "sigmoid"
    assert cfg.MODEL.FOCAL_RETINANET.ACTIVATION == "sigmoid"
    cfg.MODEL.FOCAL_RPN.GAMMA = 3.0
    focal_rpn.add_focal_rpn_config(cfg)  # a second call keeps user values
    assert cfg.MODEL.FOCAL_RPN.GAMMA == 3.0


@pytest.mark.parametrize("name,config_file,opts", MODEL_CONFIGS, ids=CONFIG_IDS)
def test_train_step_and_eval(name, config_file, opts):
    model = tiny_model(config_file, opts)
    expected_type = (
        focal_rpn.FocalRetinaNet if "retinanet" in name else torch.nn.Module
    )
    assert isinstance(model, expected_type)
    if name.startswith("fl_rpn"):
        assert isinstance(model.proposal_generator, focal_rpn.FocalRPN)
    model.train()
    with EventStorage():
        losses = model(batched_inputs())
    assert losses, "no losses returned"
    for key, value in losses.items():
        assert torch.isfinite(value), f"{key} = {value}"
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)

    model.eval()
    with torch.no_grad():
        outputs = model(batched_inputs())
    assert len(outputs) == 2
    instances = outputs[0]["instances"]
    assert instances.pred_boxes.tensor.shape[1] == 4
    if len(instances):
        assert instances.pred_classes.max() < NUM_CLASSES
        assert ((instances.scores >= 0) & (instances.scores <= 1)).all()


@pytest.mark.parametrize("name,config_file,opts", MODEL_CONFIGS, ids=CONFIG_IDS)
def test_empty_ground_truth_gives_finite_losses(name, config_file, opts):
    model = tiny_model(config_file, opts)
    model.train()
    inputs = batched_inputs(num_boxes=0)
    with EventStorage():
        losses = model(inputs)
    for key, value in losses.items():
        assert torch.isfinite(value), f"{key} = {value} with no ground truth"
    sum(losses.values()).backward()


@pytest.mark.parametrize("name,config_file,opts", MODEL_CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("bad_value", [math.inf, math.nan])
def test_non_finite_features_do_not_crash_inference(name, config_file, opts, bad_value):
    model = tiny_model(config_file, opts).eval()
    inputs = batched_inputs()
    backbone = model.backbone
    original_forward = backbone.forward

    def poisoned_forward(x):
        features = original_forward(x)
        for f in features.values():
            f[0, 0, 0, 0] = bad_value
        return features

    backbone.forward = poisoned_forward
    with torch.no_grad():
        outputs = model(inputs)
    assert len(outputs) == 2


def test_softmax_retinanet_predicts_background_logit_and_prior():
    cfg_opts = ["MODEL.FOCAL_RETINANET.ACTIVATION", "softmax"]
    model = tiny_model("retinanet_R50.yaml", cfg_opts)
    num_anchors = 9
    assert model.head.cls_score.out_channels == num_anchors * (NUM_CLASSES + 1)
    bias = model.head.cls_score.bias.view(num_anchors, NUM_CLASSES + 1)
    p_background = bias.softmax(dim=1)[:, -1]
    prior = model.head.cls_score.bias.new_tensor(0.01)
    assert torch.allclose(p_background, 1 - prior, atol=1e-6)


def test_sigmoid_retinanet_class_prior():
    model = tiny_model("retinanet_R50.yaml")
    assert torch.allclose(model.head.cls_score.bias.sigmoid(), torch.tensor(0.01), atol=1e-6)


@pytest.mark.parametrize(
    "key,value,allowed",
    [
        ("MODEL.FOCAL_RPN.ACTIVATION", "relu", "sigmoid"),
        ("MODEL.FOCAL_RPN.GAMMA", -1.0, ">= 0"),
        ("MODEL.FOCAL_RPN.ALPHA", 1.5, "[0, 1]"),
        ("MODEL.FOCAL_RPN.ALPHA", -0.5, "[0, 1]"),
        ("MODEL.FOCAL_RPN.LOSS_WEIGHT", 0.0, "> 0"),
        ("MODEL.FOCAL_RPN.LOSS_WEIGHT", -0.1, "> 0"),
    ],
)
def test_bad_focal_rpn_config_names_key_value_and_allowed(key, value, allowed):
    with pytest.raises(ValueError) as err:
        tiny_model("faster_rcnn_R50_FL-RPN_sigmoid.yaml", [key, value])
    message = str(err.value)
    assert key in message and repr(value) in message and allowed in message


@pytest.mark.parametrize(
    "key,value,allowed",
    [
        ("MODEL.FOCAL_RETINANET.ACTIVATION", "softplus", "softmax"),
        ("MODEL.RETINANET.FOCAL_LOSS_GAMMA", -2.0, ">= 0"),
        ("MODEL.RETINANET.FOCAL_LOSS_ALPHA", 2.0, "[0, 1]"),
    ],
)
def test_bad_retinanet_config_names_key_value_and_allowed(key, value, allowed):
    with pytest.raises(ValueError) as err:
        tiny_model("retinanet_R50.yaml", [key, value])
    message = str(err.value)
    assert key in message and repr(value) in message and allowed in message


def test_alpha_off_value_is_accepted():
    model = tiny_model("faster_rcnn_R50_FL-RPN_sigmoid.yaml", ["MODEL.FOCAL_RPN.ALPHA", -1.0])
    assert model.proposal_generator.focal_loss_alpha == -1.0

"""configs/lazy/: the quick lazy recipes equal their yaml recipes, and bad values fail by name."""
import math
import os
import types

import pytest
import torch
from omegaconf import DictConfig, ListConfig
from torch import nn

from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler

from focal_rpn.engine.optim import build_optimizer
from focal_rpn.lazy import yaml_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAZY_DIR = os.path.join(REPO, "configs", "lazy")

# (lazy config, the yaml recipe it mirrors)
QUICK_PAIRS = [
    ("quick_retinanet_R18.py", "quick_retinanet_R18.yaml"),
    ("quick_faster_rcnn_R18.py", "quick_faster_rcnn_R18.yaml"),
    ("quick_faster_rcnn_R18_FL-RPN_sigmoid.py", "quick_faster_rcnn_R18_FL-RPN_sigmoid.yaml"),
    ("quick_faster_rcnn_R18_FL-RPN_softmax.py", "quick_faster_rcnn_R18_FL-RPN_softmax.yaml"),
]


def describe(obj, path="", out=None, depth=0):
    """Flatten a built model into {attribute path: value}: every public setting (numbers,
    strings, lists, matchers, box transforms, ...) of every submodule, and the shape of every
    parameter and buffer (the value of buffers too: anchors, pixel mean). Weights are left out
    (random initialisation)."""
    out = {} if out is None else out
    if isinstance(obj, (bool, int, float, str, type(None))):
        out[path] = obj
    elif isinstance(obj, (list, tuple, ListConfig)):
        out[path + ".len"] = len(obj)
        for i, x in enumerate(obj):
            describe(x, f"{path}[{i}]", out, depth + 1)
    elif isinstance(obj, (dict, DictConfig)):
        for k in sorted(obj):
            describe(obj[k], f"{path}[{k!r}]", out, depth + 1)
    elif isinstance(obj, torch.Tensor):
        out[path] = (tuple(obj.shape), obj.dtype)
    elif isinstance(obj, nn.Module):
        out[path + ".type"] = type(obj).__name__
        for name, p in obj.named_parameters(recurse=False):
            out[f"{path}.{name}"] = ("param", tuple(p.shape), p.requires_grad)
        for name, b in obj.named_buffers(recurse=False):
            out[f"{path}.{name}"] = ("buffer", tuple(b.shape), b.flatten()[:64].tolist())
        for k, v in vars(obj).items():
            if not k.startswith("_") and k != "training":
                describe(v, f"{path}.{k}", out, depth + 1)
        for name, child in obj.named_children():
            describe(child, f"{path}.{name}", out, depth + 1)
    elif isinstance(obj, (types.FunctionType, types.MethodType, types.BuiltinFunctionType, type)):
        out[path] = obj.__qualname__
    elif hasattr(obj, "__dict__") and depth < 8:  # Matcher, Box2BoxTransform, ShapeSpec, ...
        out[path + ".type"] = type(obj).__name__
        for k, v in vars(obj).items():
            if not k.startswith("_"):
                describe(v, f"{path}.{k}", out, depth + 1)
    else:
        out[path] = type(obj).__name__
    return out


def differences(a, b):
    return [
        f"{k}: lazy {a.get(k, '<missing>')!r} != yaml {b.get(k, '<missing>')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k, "<missing>") != b.get(k, "<missing>")
    ]


def load(name):
    return LazyConfig.load(os.path.join(LAZY_DIR, name))


def yaml_cfg(name):
    cfg = yaml_config(os.path.join(REPO, "configs", name))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def settled(model):
    """``model`` after one forward if its channels_last is still "auto": built directly (as a
    LazyConfig does) the device decides at the first forward; the yaml path settles it when the
    model is built, from MODEL.DEVICE. Both end in eval mode."""
    model.eval()
    if getattr(model, "channels_last", None) == "auto":
        with torch.no_grad():
            model([{"image": torch.zeros(3, 64, 64, dtype=torch.uint8), "height": 64, "width": 64}])
    return model


@pytest.mark.parametrize("lazy_name,yaml_name", QUICK_PAIRS)
def test_quick_lazy_model_equals_yaml_model(lazy_name, yaml_name):
    lazy_model = settled(instantiate(load(lazy_name).model))
    yaml_model = settled(build_model(yaml_cfg(yaml_name)))
    diff = differences(describe(lazy_model), describe(yaml_model))
    assert not diff, f"{lazy_name} and {yaml_name} build different models:\n" + "\n".join(diff[:40])


@pytest.mark.parametrize("lazy_name,yaml_name", QUICK_PAIRS)
def test_quick_lazy_training_equals_yaml_training(lazy_name, yaml_name):
    lazy, y = load(lazy_name), yaml_cfg(yaml_name)
    loader = lazy.dataloader
    assert loader.train.total_batch_size == y.SOLVER.IMS_PER_BATCH
    assert list(loader.train.dataset.names.specs) == list(y.DATASETS.TRAIN)
    assert loader.test.dataset.names.specs == y.DATASETS.TEST[0]
    resize = loader.train.mapper.augmentations[0]
    assert list(resize.short_edge_length) == list(y.INPUT.MIN_SIZE_TRAIN)
    assert resize.max_size == y.INPUT.MAX_SIZE_TRAIN
    test_resize = loader.test.mapper.augmentations[0]
    assert (test_resize.short_edge_length, test_resize.max_size) == (
        y.INPUT.MIN_SIZE_TEST, y.INPUT.MAX_SIZE_TEST
    )
    assert lazy.train.max_iter == y.SOLVER.MAX_ITER
    assert lazy.train.seed == y.SEED

    # the same optimizer (class, gradient clipping, parameter groups) over the same model
    model = build_model(y)
    lazy.optimizer.params.model = model
    lazy_opt, yaml_opt = instantiate(lazy.optimizer), build_optimizer(y, model)
    assert type(lazy_opt).__mro__[1:] == type(yaml_opt).__mro__[1:]
    assert type(lazy_opt).__name__ == type(yaml_opt).__name__
    assert len(lazy_opt.param_groups) == len(yaml_opt.param_groups)
    for a, b in zip(lazy_opt.param_groups, yaml_opt.param_groups):
        assert {k: v for k, v in a.items() if k != "params"} == {
            k: v for k, v in b.items() if k != "params"
        }
        assert [p.shape for p in a["params"]] == [p.shape for p in b["params"]]

    # the same learning rate at every iteration
    from detectron2.solver import LRMultiplier

    lazy_sched = LRMultiplier(lazy_opt, instantiate(lazy.lr_multiplier), y.SOLVER.MAX_ITER)
    yaml_sched = build_lr_scheduler(y, yaml_opt)
    for it in range(y.SOLVER.MAX_ITER):
        lazy_lrs = [g["lr"] for g in lazy_opt.param_groups]
        yaml_lrs = [g["lr"] for g in yaml_opt.param_groups]
        assert all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(lazy_lrs, yaml_lrs)), it
        lazy_sched.step()
        yaml_sched.step()


def test_describe_sees_a_changed_value():
    """The comparison above can fail: one changed value (the FPN width) shows up by name."""
    cfg = load("quick_retinanet_R18.py")
    a = describe(instantiate(cfg.model))
    cfg.model.focal_loss_gamma = 1.5
    cfg.model.backbone.out_channels = 32
    b = describe(instantiate(cfg.model))
    diff = differences(a, b)
    assert any(d.startswith(".focal_loss_gamma:") for d in diff)
    assert any(".fpn_output2.weight" in d or "fpn_output3.weight" in d for d in diff)


@pytest.mark.parametrize(
    "config,key,value,message",
    [
        ("retinanet_R50.py", "activation", "tanh", "activation = 'tanh'"),
        ("retinanet_R50.py", "focal_loss_gamma", -1.0, "focal_loss_gamma = -1.0"),
        ("retinanet_R50.py", "focal_loss_alpha", 2.0, "focal_loss_alpha = 2.0"),
        ("retinanet_R50.py", "winograd", "yes", "winograd = 'yes'"),
        ("retinanet_R50.py", "activation", "softmax", "cls_score has 720"),
        ("faster_rcnn_R50_FL-RPN_sigmoid.py", "proposal_generator.activation", "relu",
         "activation = 'relu'"),
        ("faster_rcnn_R50_FL-RPN_softmax.py", "proposal_generator.focal_loss_weight", 0.0,
         "focal_loss_weight = 0.0"),
        ("faster_rcnn_R50_FL-RPN_sigmoid.py", "proposal_generator.prior_prob", 1.0,
         "prior_prob = 1.0"),
    ],
)
def test_bad_lazy_value_fails_by_name(config, key, value, message):
    cfg = LazyConfig.apply_overrides(load(config), [f"model.{key}={value!r}"])
    # small backbone: the check, not the R50 build, is under test
    cfg.model.backbone.bottom_up.stages.depth = 18
    cfg.model.backbone.bottom_up.stages.pop("stride_in_1x1")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        instantiate(cfg.model)


def test_softmax_focal_retinanet_in_a_lazy_config():
    """activation="softmax" with a K + 1 logit head; softmax_prior_prob sets p(background)."""
    cfg = load("quick_retinanet_R18.py")
    cfg.model.update(activation="softmax", softmax_prior_prob=0.01)
    cfg.model.head.num_classes = cfg.model.num_classes + 1
    model = instantiate(cfg.model)
    k = cfg.model.num_classes
    probs = model.head.cls_score.bias.detach().view(-1, k + 1).softmax(dim=-1)  # (A, K + 1)
    torch.testing.assert_close(probs[:, k], torch.full_like(probs[:, k], 0.99))
    cfg.model.activation = "sigmoid"
    cfg.model.head.num_classes = k
    with pytest.raises(ValueError, match="softmax_prior_prob = 0.01 is only for activation"):
        instantiate(cfg.model)

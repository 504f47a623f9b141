"""Config nodes of focal_rpn: ``add_focal_rpn_config(cfg)`` adds them to a detectron2 cfg."""
import torch

from detectron2.config import CfgNode as CN

#: Allowed values of the two ACTIVATION keys.
ACTIVATIONS = ("sigmoid", "softmax")


def add_focal_rpn_config(cfg):
    """Add the MODEL.FOCAL_RPN and MODEL.FOCAL_RETINANET nodes, SOLVER.OPTIMIZER / BETAS /
    TIME_BUDGET_MINUTES and INPUT.FIT_TO_DATASET to ``cfg`` (in place).

    Only new nodes are added; detectron2's defaults are never changed. Calling it twice is
    harmless (existing values are kept).
    """
    _C = cfg
    if "FOCAL_RPN" not in _C.MODEL:
        _C.MODEL.FOCAL_RPN = CN()
        # alpha of the focal loss: weight of positive anchors (1 - alpha for negatives).
        # A negative value turns alpha weighting off, as in fvcore's sigmoid_focal_loss.
        _C.MODEL.FOCAL_RPN.ALPHA = 0.25
        # gamma of the focal loss (>= 0); 0 gives (alpha-weighted) cross entropy.
        _C.MODEL.FOCAL_RPN.GAMMA = 2.0
        # lambda of Chen et al. (PRCV 2018): weight of the objectness focal loss, which is summed
        # over all labelled anchors and divided by the number of positive anchors.
        _C.MODEL.FOCAL_RPN.LOSS_WEIGHT = 0.1
        # "sigmoid": one objectness logit per anchor; "softmax": two (background, object).
        _C.MODEL.FOCAL_RPN.ACTIVATION = "sigmoid"
        # Initial objectness probability of every anchor (the bias prior of RetinaNet): with
        # focal loss summed over all anchors, a start at p = 0.5 gives a huge first loss.
        _C.MODEL.FOCAL_RPN.PRIOR_PROB = 0.01
    if "FOCAL_RETINANET" not in _C.MODEL:
        _C.MODEL.FOCAL_RETINANET = CN()
        # "sigmoid": K logits per anchor (the paper); "softmax": K + 1 (background last).
        _C.MODEL.FOCAL_RETINANET.ACTIVATION = "sigmoid"
    if "WINOGRAD" not in _C.MODEL.FOCAL_RETINANET:
        # The head's 3x3 convs (focal_rpn.layers.WinogradConv2d): "auto" times Winograd
        # F(4x4, 3x3) against nn.Conv2d once per kind of call on this machine and keeps the
        # faster (CPU float32; GPUs always use cuDNN); True: always Winograd on CPU float32;
        # False: plain nn.Conv2d. None (the default) means "auto": a None default lets yacs
        # take the string "auto" as well as the booleans of older configs.
        _C.MODEL.FOCAL_RETINANET.WINOGRAD = None
    if "CHANNELS_LAST" not in _C.MODEL.FOCAL_RETINANET:
        # Weights and images in channels-last (NHWC) memory format, which oneDNN's CPU
        # convolutions take without layout reorders (measured: docs/benchmarks.md). "auto":
        # channels-last where the model runs on CPU, the layout as built elsewhere (GPU);
        # True / False: always / never. None (the default) means "auto", as for WINOGRAD.
        _C.MODEL.FOCAL_RETINANET.CHANNELS_LAST = None
    if "CPU_BF16" not in _C.MODEL.FOCAL_RETINANET:
        # bfloat16 autocast of the backbone and the head on CPU (focal_rpn.layers.cpu_bf16); the
        # losses, the normaliser, matching and box decoding stay float32. "auto": on where the
        # model runs on a CPU with native bfloat16 (AVX-512-BF16 or AMX; logged), off elsewhere;
        # True / False: always (on CPU) / never. None (the default) means "auto". Batches of
        # images 64 px or smaller on a side (P3-P7) stay float32 (FocalRetinaNet._bf16_fits).
        _C.MODEL.FOCAL_RETINANET.CPU_BF16 = None
    if "CHANNELS_LAST" not in _C.MODEL:
        # The same for every other model that focal_rpn.engine.Trainer builds (Faster R-CNN
        # with RPN or FocalRPN, ...): "auto" (None, the default) puts its 4-d weights in
        # channels-last format on CPU, which the convolutions then keep; True / False: always /
        # never. FocalRetinaNet follows its own MODEL.FOCAL_RETINANET.CHANNELS_LAST.
        _C.MODEL.CHANNELS_LAST = None
    if "OPTIMIZER" not in _C.SOLVER:
        # "SGD" (detectron2's, the default) or "AdamW" (focal_rpn.engine.optim); both use
        # SOLVER.BASE_LR, the weight decay keys, the LR schedule and CLIP_GRADIENTS.
        _C.SOLVER.OPTIMIZER = "SGD"
    if "BETAS" not in _C.SOLVER:
        _C.SOLVER.BETAS = (0.9, 0.999)  # AdamW only
    if "TIME_BUDGET_MINUTES" not in _C.SOLVER:
        # > 0: train for at most this many minutes; MAX_ITER becomes an upper bound and the
        # schedule (STEPS, warm-up) shrinks to the same fractions of the iterations that fit
        # (focal_rpn.engine.budget). None or 0: no budget, detectron2's iteration schedule.
        # (None, not 0.0, so that yacs takes an int as well as a float: 12 or 12.5.)
        _C.SOLVER.TIME_BUDGET_MINUTES = None
    if "FIT_TO_DATASET" not in _C.INPUT:
        # True: the trainer sets the number of classes, the input size and (where they cover
        # the boxes badly) the anchor sizes from the training json's statistics, each logged
        # (focal_rpn.data.fit); options given on the command line are kept. The CPU recipes
        # (configs/quick_*.yaml) set it; False (the default) leaves a config as written.
        _C.INPUT.FIT_TO_DATASET = False
    return cfg


#: The value of an ALPHA key that turns alpha weighting off (as in fvcore's sigmoid_focal_loss).
ALPHA_OFF = -1.0



# Checks of config values, run when a model is built. Each raises ValueError naming the key,
# the value given and what is allowed.


def check_activation(key, value):
    if value not in ACTIVATIONS:
        raise ValueError(f"{key} = {value!r} is not supported; allowed: {list(ACTIVATIONS)}")


def check_bool(key, value):
    if not isinstance(value, bool):
        raise ValueError(f"{key} = {value!r} is not allowed: use True or False")


def check_auto_mode(key, value, allowed: str):
    """The mode named by ``value``: "auto" (also None, for yacs defaults that must take a
    string as well as a boolean), True or False. Raises ValueError naming ``key``, the value
    and ``allowed`` (what the three modes mean) otherwise."""
    if value is None or (isinstance(value, str) and value.lower() == "auto"):
        return "auto"
    if isinstance(value, bool):
        return value
    raise ValueError(f"{key} = {value!r} is not allowed: use {allowed}")


def check_channels_last_mode(key, value):
    """MODEL.FOCAL_RETINANET.CHANNELS_LAST / MODEL.CHANNELS_LAST: see :func:`check_auto_mode`."""
    return check_auto_mode(
        key, value, "\"auto\" (channels-last on CPU, the default), True (always channels-last) "
        "or False (never)"
    )


def channels_last_on(key, value, device) -> bool:
    """A CHANNELS_LAST value (checked as :func:`check_channels_last_mode`) settled for a model
    on ``device`` (a torch.device or a string such as MODEL.DEVICE): "auto" is True on CPU."""
    mode = check_channels_last_mode(key, value)
    return torch.device(device).type == "cpu" if mode == "auto" else mode


def check_alpha(key, value):
    if not (0.0 <= value <= 1.0 or value == ALPHA_OFF):
        raise ValueError(
            f"{key} = {value!r} is not allowed: use a value in [0, 1], "
            f"or {ALPHA_OFF} to turn alpha weighting off"
        )


def check_gamma(key, value):
    if not value >= 0.0:
        raise ValueError(f"{key} = {value!r} is not allowed: gamma must be >= 0")


def check_positive(key, value):
    if not value > 0.0:
        raise ValueError(f"{key} = {value!r} is not allowed: it must be > 0")


def check_probability(key, value):
    if not 0.0 < value < 1.0:
        raise ValueError(f"{key} = {value!r} is not allowed: it must be in (0, 1)")

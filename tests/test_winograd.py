"""Winograd F(4x4, 3x3) convolutions: values and gradients against F.conv2d, dispatch, and
FocalRetinaNet with its head on the Winograd path against detectron2's RetinaNet."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import Conv2d as D2Conv2d
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import focal_rpn.layers.path_timing as path_timing
import focal_rpn.layers.winograd as winograd
from focal_rpn.layers import WinogradConv2d, use_winograd_convs, winograd_conv3x3

from tiny_models import batched_inputs, tiny_cfg

SHAPES = [  # (N, C, K, H, W): multiples of 4, ragged sizes, 1 x 1 maps, C != K
    (2, 8, 8, 8, 8),
    (1, 5, 7, 9, 6),
    (3, 4, 2, 1, 1),
    (2, 3, 16, 13, 17),
    (1, 16, 4, 4, 20),
]


def _random(shape, seed, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("n,c,k,h,w", SHAPES)
def test_equals_conv2d_in_float64(n, c, k, h, w):
    x, weight, bias = _random((n, c, h, w), 0), _random((k, c, 3, 3), 1), _random((k,), 2)
    torch.testing.assert_close(
        winograd_conv3x3(x, weight, bias), F.conv2d(x, weight, bias, padding=1),
        rtol=1e-10, atol=1e-10,
    )
    torch.testing.assert_close(
        winograd_conv3x3(x, weight), F.conv2d(x, weight, padding=1), rtol=1e-10, atol=1e-10
    )


# Products of one image (4 tiles x 5 channels x 36 x 8 bytes) take 5760 bytes: budgets of
# one channel, two channels, one image, two images and everything at once.
@pytest.mark.parametrize("budget", [1152, 2400, 5760, 11520, 1 << 20])
@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_in_chunks_equals_conv2d(budget, channels_last, monkeypatch):
    monkeypatch.setattr(winograd, "INFERENCE_BUFFER_BYTES", budget)
    x, weight, bias = _random((3, 4, 7, 8), 0), _random((5, 4, 3, 3), 1), _random((5,), 2)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = winograd_conv3x3(x, weight, bias)
    torch.testing.assert_close(y, F.conv2d(x, weight, bias, padding=1), rtol=1e-10, atol=1e-10)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else
                           torch.contiguous_format)


def test_inference_with_a_precomputed_domain_weight():
    x, weight, bias = _random((2, 4, 9, 6), 0), _random((5, 4, 3, 3), 1), _random((5,), 2)
    u = winograd.winograd_domain_weight(weight)
    assert u.shape == (36, 4, 5) and u.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(
            winograd_conv3x3(x, weight, bias, domain_weight=u),
            F.conv2d(x, weight, bias, padding=1), rtol=1e-10, atol=1e-10,
        )
        with pytest.raises(ValueError, match=r"domain_weight has shape \(36, 5, 4\)"):
            winograd_conv3x3(x, weight, bias, domain_weight=u.transpose(1, 2))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("n,c,k,h,w", SHAPES)
def test_gradients_equal_conv2d_in_float64(n, c, k, h, w, channels_last):
    layout = torch.channels_last if channels_last else torch.contiguous_format
    leaves = [_random((n, c, h, w), 0).contiguous(memory_format=layout),
              _random((k, c, 3, 3), 1), _random((k,), 2)]
    grad_out = _random((n, k, h, w), 3)
    grads, outputs = [], []
    for fn in (winograd_conv3x3, lambda x, wt, b: F.conv2d(x, wt, b, padding=1)):
        inputs = [t.clone(memory_format=torch.preserve_format).requires_grad_() for t in leaves]
        outputs.append(fn(*inputs))
        outputs[-1].backward(grad_out)
        grads.append([t.grad for t in inputs])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-10, atol=1e-10)
    for ours, reference in zip(*grads):
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)
    # the output and the input's gradient keep the input's memory format
    assert outputs[0].is_contiguous(memory_format=layout)
    assert grads[0][0].is_contiguous(memory_format=layout) or h * w == 1 or c == 1


def test_gradcheck():
    inputs = [
        _random((1, 2, 5, 6), 0).requires_grad_(),
        _random((3, 2, 3, 3), 1).requires_grad_(),
        _random((3,), 2).requires_grad_(),
    ]
    assert torch.autograd.gradcheck(winograd_conv3x3, inputs)


def test_training_path_keeps_only_input_and_weight_for_backward():
    # the transformed input and filters (2.25 x and 4 x their size) are recomputed in the
    # backward, not saved: a training step must not hold them for every conv
    x = _random((2, 8, 12, 12), 0).requires_grad_()
    weight = _random((8, 8, 3, 3), 1).requires_grad_()
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = winograd_conv3x3(x, weight)
    saved_bytes = sum(t.numel() * t.element_size() for t in saved)
    assert saved_bytes <= x.numel() * x.element_size() + weight.numel() * weight.element_size()
    y.backward(torch.ones_like(y))  # and the backward still works from them
    assert x.grad is not None and weight.grad is not None


def test_float32_error_is_small_at_retinanet_scale():
    """256 -> 256 channels on a 2 x 20 x 20 map (summing 2304 products per output): the
    float32 result is within 2e-5 of the float64 convolution, relative to the output's scale."""
    x, weight = _random((2, 256, 20, 20), 0), _random((256, 256, 3, 3), 1) * 0.02
    reference = F.conv2d(x, weight, padding=1)
    ours = winograd_conv3x3(x.float(), weight.float()).double()
    error = (ours - reference).abs().max() / reference.abs().max()
    assert error < 2e-5, error


def test_rejects_wrong_shapes_with_a_message():
    with pytest.raises(ValueError, match=r"weight \(K, C, 3, 3\)"):
        winograd_conv3x3(torch.zeros(1, 2, 4, 4), torch.zeros(2, 2, 5, 5))
    with pytest.raises(ValueError, match="3 input channels, x has 2"):
        winograd_conv3x3(torch.zeros(1, 2, 4, 4), torch.zeros(2, 3, 3, 3))


@pytest.fixture
def winograd_calls(monkeypatch):
    """A list that gets one entry per call of the Winograd path inside WinogradConv2d."""
    calls = []
    original = winograd.winograd_conv3x3

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(winograd, "winograd_conv3x3", spy)
    return calls


def _eligible_conv():
    torch.manual_seed(0)
    return nn.Conv2d(winograd.MIN_IN_CHANNELS, winograd.MIN_OUT_CHANNELS, 3, padding=1)


def test_module_forced_on_takes_winograd_path(winograd_calls):
    conv = _eligible_conv()
    fast = WinogradConv2d.from_conv(conv, mode=True)
    x = torch.randn(1, conv.in_channels, 12, 12)
    torch.testing.assert_close(fast(x), conv(x), rtol=1e-4, atol=1e-4)
    assert len(winograd_calls) == 1


@pytest.fixture
def weight_transforms(monkeypatch):
    """A list that gets one entry per transform of filters into the Winograd domain."""
    calls = []
    original = winograd.winograd_domain_weight

    def spy(weight):
        calls.append(tuple(weight.shape))
        return original(weight)

    monkeypatch.setattr(winograd, "winograd_domain_weight", spy)
    return calls


def _small_forced_conv(seed=0):
    torch.manual_seed(seed)
    return WinogradConv2d(6, 5, 3, padding=1, mode=True).eval()


@pytest.mark.parametrize("edit", ["copy_", "data", "optimizer", "load_state_dict", "replace"])
def test_inference_keeps_transformed_filters_only_while_the_weight_is_unchanged(
    edit, weight_transforms
):
    """The filters are transformed once for repeated inference calls, and again after every
    kind of change to the weight, including edits that the version counter misses
    (``weight.data``): each output equals F.conv2d with the weight of that moment."""
    conv = _small_forced_conv()
    x = torch.randn(2, 6, 9, 9)

    def check():
        with torch.no_grad():
            torch.testing.assert_close(
                conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=1e-4, atol=1e-5
            )

    check()
    check()
    assert len(weight_transforms) == 1
    if edit == "copy_":
        with torch.no_grad():
            conv.weight.copy_(torch.randn_like(conv.weight))
    elif edit == "data":
        conv.weight.data[0, 0, 1, 1] += 1.0
    elif edit == "optimizer":
        conv(x).sum().backward()
        torch.optim.SGD(conv.parameters(), lr=0.1).step()
    elif edit == "load_state_dict":
        conv.load_state_dict(_small_forced_conv(seed=1).state_dict())
    else:
        conv.weight = nn.Parameter(torch.randn_like(conv.weight))
    check()
    assert len(weight_transforms) == 2


def test_training_calls_do_not_use_or_fill_the_inference_cache(weight_transforms):
    conv = _small_forced_conv().train()
    x = torch.randn(1, 6, 8, 8, requires_grad=True)
    conv(x).sum().backward()
    assert weight_transforms == [] and "_domain_weight_cache" not in conv.__dict__


def test_transformed_filters_stay_out_of_state_dicts_pickles_and_copies():
    conv = _small_forced_conv()
    with torch.no_grad():
        expected = conv(torch.ones(1, 6, 8, 8))
    assert "_domain_weight_cache" in conv.__dict__
    assert set(conv.state_dict()) == {"weight", "bias"}
    buffer = io.BytesIO()
    torch.save(conv, buffer)
    buffer.seek(0)
    for other in (torch.load(buffer, weights_only=False), copy.deepcopy(conv)):
        assert "_domain_weight_cache" not in other.__dict__
        with torch.no_grad():
            torch.testing.assert_close(other(torch.ones(1, 6, 8, 8)), expected)


@pytest.mark.parametrize(
    "case", ["forced off", "float64", "tracing", "autocast", "deterministic"],
)
@pytest.mark.parametrize("mode", [True, "auto"])
def test_module_falls_back_to_conv2d_exactly(case, mode, winograd_calls, monkeypatch):
    conv = _eligible_conv()
    x = torch.randn(1, conv.in_channels, 12, 12)
    if case == "float64":
        conv, x = conv.double(), x.double()
    elif case == "forced off":
        mode = False
    elif case == "deterministic":
        mode = "auto"  # (forced Winograd is deterministic by itself: True is not affected)
        monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    fast = WinogradConv2d.from_conv(conv, mode=mode)
    with torch.no_grad():
        if case == "tracing":
            actual = torch.jit.trace(fast, x, check_trace=False)(x)
            expected = conv(x)
        elif case == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                actual, expected = fast(x), conv(x)
            assert actual.dtype == torch.bfloat16
        else:
            actual, expected = fast(x), conv(x)
        assert torch.equal(actual, expected)
    assert winograd_calls == []


def test_from_conv_shares_parameters_and_state_dict_keys():
    conv = _eligible_conv()
    state = torch.random.get_rng_state()
    fast = WinogradConv2d.from_conv(conv)
    assert torch.equal(torch.random.get_rng_state(), state)  # no parameters were drawn
    assert fast.weight is conv.weight and fast.bias is conv.bias
    assert fast.state_dict().keys() == conv.state_dict().keys()
    no_bias = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    assert WinogradConv2d.from_conv(no_bias).bias is None


@pytest.mark.parametrize(
    "kwargs", [{"stride": 2, "padding": 1}, {"padding": 0}, {"padding": 2, "dilation": 2},
               {"padding": 1, "groups": 2}],
)
def test_constructor_rejects_other_convolutions(kwargs):
    with pytest.raises(ValueError, match="3x3 convolution with stride 1, padding 1"):
        WinogradConv2d(4, 4, 3, **kwargs)


def test_use_winograd_convs_replaces_plain_3x3_convs_only():
    model = nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1),  # replaced
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False)),  # replaced (nested)
        nn.Conv2d(4, 4, 3, stride=2, padding=1),  # strided: kept
        nn.Conv2d(4, 4, 1),  # 1x1: kept
        D2Conv2d(4, 4, 3, padding=1),  # a subclass with norm / activation: kept
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_winograd_convs(model) == 2
    kinds = [type(m) for m in (model[0], model[2][0], model[3], model[4], model[5])]
    assert kinds == [WinogradConv2d, WinogradConv2d, nn.Conv2d, nn.Conv2d, D2Conv2d]
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert use_winograd_convs(model) == 0  # idempotent


def _wide_retinanet_pair(opts=()):
    """FocalRetinaNet and detectron2's RetinaNet, same weights, with a 256-channel head so that
    P3 of a 128 px image (16 x 16) takes the Winograd path."""
    wide = ["MODEL.FPN.OUT_CHANNELS", 256, "INPUT.MIN_SIZE_TEST", 128, "INPUT.MAX_SIZE_TEST", 128]
    torch.manual_seed(0)
    focal = build_model(tiny_cfg("retinanet_R50.yaml", wide + list(opts)))
    stock = build_model(
        tiny_cfg("retinanet_R50.yaml", wide + ["MODEL.META_ARCHITECTURE", "RetinaNet"])
    )
    stock.load_state_dict(
        {k: v for k, v in focal.state_dict().items() if k != "loss_normalizer"}, strict=True
    )
    return focal, stock


def test_focal_retinanet_head_on_winograd_path_matches_stock(winograd_calls):
    focal, stock = _wide_retinanet_pair(["MODEL.FOCAL_RETINANET.WINOGRAD", True])
    head_convs = [m for m in focal.head.modules() if isinstance(m, nn.Conv2d)]
    assert head_convs and all(type(m) is WinogradConv2d for m in head_convs)
    inputs = batched_inputs(num_images=2, num_boxes=3, size=128)
    with EventStorage():
        focal_losses = focal(copy.deepcopy(inputs))
        stock_losses = stock(copy.deepcopy(inputs))
    assert winograd_calls, "no convolution took the Winograd path"
    for key in stock_losses:
        torch.testing.assert_close(focal_losses[key], stock_losses[key], rtol=1e-4, atol=1e-6)
    sum(focal_losses.values()).backward()
    sum(stock_losses.values()).backward()
    for name in ("cls_subnet.0.weight", "cls_score.weight", "bbox_subnet.0.weight"):
        ours = dict(focal.head.named_parameters())[name].grad
        theirs = dict(stock.head.named_parameters())[name].grad
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3 * theirs.abs().max())


def test_winograd_off_keeps_plain_convs():
    focal, _ = _wide_retinanet_pair(["MODEL.FOCAL_RETINANET.WINOGRAD", False])
    assert not any(isinstance(m, WinogradConv2d) for m in focal.modules())


def test_bad_winograd_value_names_the_key():
    # from the command line (or a yaml file) and set in code alike, refused at model build
    cfg = tiny_cfg("retinanet_R50.yaml", ["MODEL.FOCAL_RETINANET.WINOGRAD", "yes"])
    with pytest.raises(ValueError, match=r"MODEL.FOCAL_RETINANET.WINOGRAD = 'yes'.*auto.*True.*False"):
        build_model(cfg)
    cfg = tiny_cfg("retinanet_R50.yaml")
    cfg.MODEL.FOCAL_RETINANET.WINOGRAD = 1
    with pytest.raises(ValueError, match=r"MODEL.FOCAL_RETINANET.WINOGRAD = 1 "):
        build_model(cfg)
    with pytest.raises(ValueError, match="WinogradConv2d mode = 'fast'"):
        WinogradConv2d(4, 4, 3, padding=1, mode="fast")


@pytest.mark.parametrize("value,mode", [(None, "auto"), ("auto", "auto"), ("AUTO", "auto"),
                                        (True, True), (False, False)])
def test_winograd_config_values_old_bools_and_auto(value, mode):
    """The default (None) is "auto"; the booleans of older configs keep working, from the
    command line too (yacs takes any type over a None default)."""
    opts = [] if value is None else ["MODEL.FOCAL_RETINANET.WINOGRAD", str(value)]
    focal = build_model(tiny_cfg("retinanet_R50.yaml", opts))
    convs = [m for m in focal.head.modules() if isinstance(m, nn.Conv2d)]
    if mode is False:
        assert all(type(m) is nn.Conv2d for m in convs)
    else:
        assert convs and all(type(m) is WinogradConv2d and m.mode == mode for m in convs)


# ------------------------------------------------------------------ "auto": timed and cached
@pytest.fixture
def tuner(monkeypatch):
    """A fresh process-wide tuner (the module's TUNER replaced for the test) and the log."""
    fresh = winograd.ConvPathTuner(rounds=1)
    monkeypatch.setattr(winograd, "TUNER", fresh)
    return fresh


class _FakeClock:
    """time.perf_counter for the tuner: each path's call lasts what ``ms`` says."""

    def __init__(self, monkeypatch, ms):
        self.now, self.ms, self.calls = 0.0, ms, []
        monkeypatch.setattr(path_timing.time, "perf_counter", self)
        original = winograd.winograd_conv3x3

        def timed_winograd(*args, **kwargs):
            self.now += self.ms["winograd"] / 1e3
            self.calls.append("winograd")
            return original(*args, **kwargs)

        original_conv2d = winograd.F.conv2d

        class _F:  # winograd.F with a timed conv2d (only the tuner's module sees it)
            def __getattr__(self, name):
                return getattr(F, name)

            @staticmethod
            def conv2d(*args, **kwargs):
                self.now += self.ms["conv2d"] / 1e3
                self.calls.append("conv2d")
                return original_conv2d(*args, **kwargs)

        monkeypatch.setattr(winograd, "winograd_conv3x3", timed_winograd)
        monkeypatch.setattr(winograd, "F", _F())

    def __call__(self):
        return self.now


@pytest.mark.parametrize("faster", ["winograd", "conv2d"])
def test_auto_takes_the_measured_faster_path_and_equals_conv2d(faster, tuner, monkeypatch):
    ms = {"winograd": 1.0, "conv2d": 5.0} if faster == "winograd" else {"winograd": 5.0, "conv2d": 1.0}
    clock = _FakeClock(monkeypatch, ms)
    conv = nn.Conv2d(16, 8, 3, padding=1)
    fast = WinogradConv2d.from_conv(conv)  # mode "auto"
    x = torch.randn(2, 16, 9, 7)
    y = fast(x)
    (choice,) = tuner.choices().values()
    assert choice.winograd == (faster == "winograd")
    assert (choice.winograd_ms, choice.conv2d_ms) == pytest.approx((ms["winograd"], ms["conv2d"]))
    assert "winograd" in clock.calls and "conv2d" in clock.calls  # both were timed
    torch.testing.assert_close(y, F.conv2d(x, conv.weight, conv.bias, padding=1),
                               rtol=1e-4, atol=1e-5)
    # later calls: the cached choice, no timing (nn.Conv2d's forward bypasses winograd.F)
    clock.calls.clear()
    fast(x)
    assert clock.calls == (["winograd"] if faster == "winograd" else [])


def test_auto_near_tie_stays_on_conv2d(tuner, monkeypatch):
    _FakeClock(monkeypatch, {"winograd": 0.95, "conv2d": 1.0})  # within the 10% margin
    fast = WinogradConv2d.from_conv(nn.Conv2d(8, 8, 3, padding=1))
    fast(torch.randn(1, 8, 8, 8))
    assert [c.winograd for c in tuner.choices().values()] == [False]


def test_auto_choice_cached_per_key_and_logged_once(tuner, monkeypatch, caplog):
    clock = _FakeClock(monkeypatch, {"winograd": 1.0, "conv2d": 2.0})
    conv = WinogradConv2d.from_conv(nn.Conv2d(8, 4, 3, padding=1))
    x = torch.randn(2, 8, 16, 16)
    with caplog.at_level("INFO", logger="focal_rpn.layers.winograd"):
        for _ in range(3):
            conv(x)  # the weight requires grad: a training key (forward + backward timed)
        conv(torch.randn(2, 8, 17, 15))  # about the same pixels: the same bucket
        conv(x.requires_grad_(True)).sum().backward()  # the same training key
        with torch.no_grad():
            conv(x)  # inference: its own key (forward timed)
        conv(torch.randn(2, 8, 32, 32))  # 4x the pixels: a new key
        conv(torch.randn(3, 8, 16, 16))  # another batch size: a new key
        threads = torch.get_num_threads()
        torch.set_num_threads(threads + 1)
        try:
            conv(torch.randn(2, 8, 16, 16))  # another thread count: a new key
        finally:
            torch.set_num_threads(threads)
    keys = list(tuner.choices())
    assert len(keys) == 5, keys
    assert [k[-1] for k in keys].count("inference") == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "focal_rpn.layers.winograd"]
    assert len(lines) == 5 and all("-> Winograd" in line for line in lines), lines
    assert "8->4 on 2x16x16" in lines[0] and "training" in lines[0]
    assert "inference" in lines[1]
    # a cleared tuner times again
    tuner.clear()
    clock.calls.clear()
    conv(x)
    assert clock.calls.count("conv2d") >= 2 and len(tuner.choices()) == 1


def test_auto_timing_leaves_the_callers_graph_and_gradients_alone(tuner):
    """The timing runs on detached copies: the training step's gradients are those of the
    chosen path alone, and no .grad appears during timing."""
    conv = nn.Conv2d(8, 8, 3, padding=1)
    fast = WinogradConv2d.from_conv(conv)
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    y = fast(x)
    assert conv.weight.grad is None and x.grad is None
    y.square().sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    conv_ref = nn.Conv2d(8, 8, 3, padding=1)
    conv_ref.load_state_dict(conv.state_dict())
    conv_ref(x2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad, conv_ref.weight.grad, rtol=1e-4, atol=1e-4)
    assert len(tuner.choices()) == 1


def test_auto_under_tracing_is_plain_conv_without_timing(tuner):
    conv = nn.Conv2d(8, 8, 3, padding=1)
    fast = WinogradConv2d.from_conv(conv)
    x = torch.randn(1, 8, 12, 12)
    traced = torch.jit.trace(fast, x, check_trace=False)
    assert tuner.choices() == {}
    with torch.no_grad():
        assert torch.equal(traced(x), conv(x))
    assert "aten::_convolution" in str(traced.graph) or "aten::conv2d" in str(traced.graph)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_falls_back_to_conv2d_and_function_runs_on_cuda(winograd_calls):
    conv = _eligible_conv().cuda()
    x = torch.randn(1, conv.in_channels, 16, 16, device="cuda")
    fast = WinogradConv2d.from_conv(conv)
    with torch.no_grad():
        assert torch.equal(fast(x), conv(x))
        assert winograd_calls == []
        torch.testing.assert_close(
            winograd.winograd_conv3x3(x, conv.weight, conv.bias), conv(x), rtol=1e-3, atol=1e-3
        )


def test_cached_path_choice_times_each_kind_of_call_once_and_logs_it():
    class Tuner(path_timing.CachedPathChoice):
        def __init__(self):
            super().__init__(margin=0.9)
            self.timed, self.logged = [], []

        def key(self, size):
            return size // 10

        def _time(self, size):
            self.timed.append(size)
            return self.prefers(challenger_s=size * 0.85, reference_s=size)

        def _log(self, key, choice, size):
            self.logged.append((key, choice))

    tuner = Tuner()
    assert [tuner.choose(s) for s in (11, 12, 25, 19)] == [True] * 4
    assert tuner.timed == [11, 25] and tuner.logged == [(1, True), (2, True)]
    assert tuner.choices() == {1: True, 2: True}
    tuner.margin = 0.8  # 0.85 of the reference is no longer enough
    tuner.clear()
    assert tuner.choose(11) is False and tuner.timed == [11, 25, 11]

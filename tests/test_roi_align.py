"""focal_rpn.layers: the sparse CPU ROIAlign equals torchvision's roi_align (values and input
gradients) in every regime, and swaps into detectron2 models without changing their outputs."""
import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

from detectron2.layers import ROIAlign
from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from focal_rpn.layers import FastROIAlign, roi_align_cpu, use_fast_roi_align
from tiny_models import batched_inputs, tiny_cfg

TOL = dict(rtol=1e-5, atol=1e-5)


def make_rois(num, num_images, size, min_wh=1.0, max_wh=None, margin=0.0, seed=0,
              dtype=torch.float32):
    """(num, 5) [batch, x1, y1, x2, y2]: corners in [-margin, size + margin]."""
    g = torch.Generator().manual_seed(seed)
    max_wh = size if max_wh is None else max_wh
    wh = min_wh + torch.rand(num, 2, generator=g, dtype=torch.float64) * (max_wh - min_wh)
    xy = -margin + torch.rand(num, 2, generator=g, dtype=torch.float64) * (size + 2 * margin)
    batch = torch.randint(0, num_images, (num, 1), generator=g).to(torch.float64)
    return torch.cat([batch, xy, xy + wh], dim=1).to(dtype)


def compare(x, rois, output_size, scale, sampling_ratio, aligned, grad_seed=1):
    """ours vs torchvision: forward values and the gradient of a random linear functional."""
    x1 = x.detach().clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    out1 = roi_align_cpu(x1, rois, output_size, scale, sampling_ratio, aligned)
    out2 = tv_roi_align(x2, rois, output_size, scale, sampling_ratio, aligned)
    assert out1.shape == out2.shape and out1.dtype == out2.dtype
    torch.testing.assert_close(out1, out2, **TOL)
    g = torch.randn(out2.shape, generator=torch.Generator().manual_seed(grad_seed),
                    dtype=x.dtype)
    out1.backward(g)
    out2.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, **TOL)
    return out2, x2.grad


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2, -1])
@pytest.mark.parametrize("output_size", [(7, 7), (3, 5)])
def test_matches_torchvision_inside_and_outside_the_image(aligned, sampling_ratio, output_size):
    torch.manual_seed(0)
    N, C, H, W = 3, 4, 13, 17
    x = torch.randn(N, C, H, W)
    scale = 0.25  # image is 4x the feature map
    rois = torch.cat([
        make_rois(20, N, 60, min_wh=4, max_wh=40, seed=1),               # inside
        make_rois(20, N, 60, min_wh=4, max_wh=40, margin=30, seed=2),    # partly/fully outside
        make_rois(6, N, 60, min_wh=0.01, max_wh=2, seed=3),              # tiny (< 1 pixel)
        make_rois(4, N, 60, min_wh=150, max_wh=400, margin=100, seed=4),  # huge
    ])
    out, grad = compare(x, rois, output_size, scale, sampling_ratio, aligned)
    # the cases are not vacuous: some bins are zero (outside), most are not
    assert (out.abs().sum((1, 2, 3)) == 0).any() and (out != 0).float().mean() > 0.5
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("aligned", [True, False])
def test_degenerate_rois_match_torchvision(aligned):
    """Zero-size, inverted, on the border, exactly on pixel centres, at -1 / H boundaries."""
    N, C, H, W = 2, 3, 8, 9
    x = torch.randn(N, C, H, W, generator=torch.Generator().manual_seed(0))
    rois = torch.tensor([
        [0, 2.0, 2.0, 2.0, 2.0],      # zero size
        [1, 5.0, 5.0, 2.0, 3.0],      # inverted
        [0, -1.0, -1.0, 9.0, 8.0],    # whole map and the -1 margin
        [1, 0.0, 0.0, 9.0, 8.0],      # exactly the map
        [0, -3.0, -3.0, -1.5, -1.2],  # fully outside, top-left
        [1, 8.6, 7.6, 12.0, 12.0],    # past the bottom-right edge
        [0, 7.5, 6.5, 8.5, 7.5],      # straddles the last pixel
        [1.9, 1.0, 1.0, 4.0, 4.0],    # batch index truncates to 1
    ])
    for sampling_ratio in (0, 1, 2):
        compare(x, rois, (2, 3), 1.0, sampling_ratio, aligned)


@pytest.mark.parametrize("aligned", [True, False])
def test_samples_exactly_on_the_minus_one_and_size_boundaries_count(aligned):
    """A sample at y = -1 or y = H (x likewise) is inside (torchvision's closed interval)."""
    N, C, H, W = 1, 2, 6, 7
    x = torch.randn(N, C, H, W, generator=torch.Generator().manual_seed(0))
    o = 0.5 if aligned else 0.0  # the single sample sits at the roi centre - o
    centres = [(-1.0, 2.0), (float(H), 3.0), (2.0, -1.0), (3.0, float(W)), (-1.0, float(W))]
    rois = torch.tensor([[0, cx + o - 1, cy + o - 1, cx + o + 1, cy + o + 1]
                         for cy, cx in centres])
    out, _ = compare(x, rois, (1, 1), 1.0, 1, aligned)
    assert (out != 0).all()


def test_several_scales_and_float64():
    x = torch.randn(2, 5, 11, 6, dtype=torch.float64)
    rois = make_rois(30, 2, 80, min_wh=2, max_wh=60, margin=10, dtype=torch.float64)
    for scale in (1 / 8, 0.3, 1.0):
        compare(x, rois, (4, 4), scale, 0, True)


def test_empty_rois_and_empty_bins():
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    out = roi_align_cpu(x, torch.zeros(0, 5), (7, 7), 1.0, 0, True)
    assert out.shape == (0, 3, 7, 7)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    # every roi samples nothing (zero size, aligned): all-zero output, zero gradient
    compare(x.detach(), torch.tensor([[0, 1.0, 1.0, 1.0, 1.0], [1, 3.0, 2.0, 3.0, 2.0]]),
            (2, 2), 1.0, 0, True)


def test_gradcheck_float64():
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.3, 0.7, 4.2, 3.9], [1, -1.2, 1.1, 6.5, 5.7],
                         [1, 2.2, 2.1, 2.9, 2.6]], dtype=torch.float64)
    for aligned in (True, False):
        assert torch.autograd.gradcheck(
            lambda t: roi_align_cpu(t, rois, (3, 2), 1.0, 0, aligned), (x,), eps=1e-6, atol=1e-7
        )


def test_output_is_contiguous_and_input_layout_does_not_matter():
    x = torch.randn(2, 8, 9, 10)
    rois = make_rois(12, 2, 10, min_wh=1, max_wh=8)
    ref = tv_roi_align(x, rois, (3, 3), 1.0, 2, True)
    out = roi_align_cpu(x, rois, (3, 3), 1.0, 2, True)
    assert out.is_contiguous()
    torch.testing.assert_close(out, ref, **TOL)
    xcl = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    out_cl = roi_align_cpu(xcl, rois, 3, 1.0, 2, True)
    torch.testing.assert_close(out_cl, ref, **TOL)
    out_cl.sum().backward()
    assert xcl.grad.shape == x.shape


def test_bad_arguments_raise_clear_errors():
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"rois must be \(R, 5\)"):
        roi_align_cpu(x, torch.zeros(3, 4), 2, 1.0, 0, True)
    with pytest.raises(ValueError, match=r"image indices in \[0, 1\)"):
        roi_align_cpu(x, torch.tensor([[1.0, 0, 0, 2, 2]]), 2, 1.0, 0, True)
    with pytest.raises(ValueError, match="float32/float64"):
        roi_align_cpu(x.half(), torch.tensor([[0.0, 0, 0, 2, 2]]), 2, 1.0, 0, True)


@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIAlign"])
def test_fast_roi_align_in_a_detectron2_pooler(pooler_type):
    """4 FPN levels, boxes of every size: same output and feature gradients as the stock pooler."""
    torch.manual_seed(0)
    scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
    stock = ROIPooler((7, 7), scales, sampling_ratio=0, pooler_type=pooler_type)
    fast = ROIPooler((7, 7), scales, sampling_ratio=0, pooler_type=pooler_type)
    assert use_fast_roi_align(fast) == 4
    assert all(type(m) is FastROIAlign for m in fast.level_poolers)
    assert [m.aligned for m in fast.level_poolers] == [pooler_type == "ROIAlignV2"] * 4
    feats = [torch.randn(2, 6, 128 // int(1 / s), 128 // int(1 / s), requires_grad=True)
             for s in scales]
    boxes = [Boxes(make_rois(40, 1, 128, min_wh=2, max_wh=128, seed=i)[:, 1:]) for i in (5, 6)]
    out_stock = stock(feats, boxes)
    g = torch.randn(out_stock.shape)
    grads_stock = torch.autograd.grad(out_stock, feats, g)
    out_fast = fast(feats, boxes)
    grads_fast = torch.autograd.grad(out_fast, feats, g)
    torch.testing.assert_close(out_fast, out_stock, **TOL)
    for a, b in zip(grads_fast, grads_stock):
        torch.testing.assert_close(a, b, **TOL)


def test_fast_roi_align_defers_to_detectron2_off_the_fast_path(monkeypatch):
    import focal_rpn.layers.roi_align as impl

    m = FastROIAlign((2, 2), 1.0, 0, True)
    assert isinstance(m, ROIAlign) and "FastROIAlign(output_size=(2, 2)" in repr(m)
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    rois = torch.tensor([[0.0, 1, 1, 4, 5]])
    calls = []
    monkeypatch.setattr(impl, "roi_align_cpu", lambda *a: calls.append(a) or tv_roi_align(*a))
    m(x, rois)
    assert len(calls) == 1  # float32 CPU with a gradient: the fast path
    out = m(x.detach().half(), rois)  # half: torchvision's kernel through detectron2's ROIAlign
    assert len(calls) == 1 and out.dtype == torch.float16
    torch.testing.assert_close(out, tv_roi_align(x.half(), rois.half(), (2, 2), 1.0, 0, True))


def test_use_fast_roi_align_on_faster_rcnn_keeps_the_training_losses():
    cfg = tiny_cfg("quick_faster_rcnn_R18.yaml")
    torch.manual_seed(0)
    stock = build_model(cfg)
    torch.manual_seed(0)
    fast = build_model(cfg)
    fast.load_state_dict(stock.state_dict())
    assert use_fast_roi_align(fast) == len(fast.roi_heads.box_pooler.level_poolers) == 4
    assert use_fast_roi_align(fast) == 0  # idempotent
    assert all(type(m) is FastROIAlign for m in fast.roi_heads.box_pooler.level_poolers)
    assert all(type(m) is ROIAlign for m in stock.roi_heads.box_pooler.level_poolers)
    losses = []
    for model in (stock, fast):
        model.train()
        torch.manual_seed(1)  # same proposal sampling in both
        with EventStorage():
            loss = model(batched_inputs(num_images=2, num_boxes=3))
        total = sum(loss.values())
        total.backward()
        losses.append({k: v.item() for k, v in loss.items()})
    assert losses[0].keys() == losses[1].keys()
    for k in losses[0]:
        assert losses[1][k] == pytest.approx(losses[0][k], rel=1e-5, abs=1e-6), k
    fast_grad = fast.roi_heads.box_head.fc1.weight.grad
    stock_grad = stock.roi_heads.box_head.fc1.weight.grad
    torch.testing.assert_close(fast_grad, stock_grad, rtol=1e-4, atol=1e-6)


def test_trainer_builds_faster_rcnn_with_fast_roi_align_and_retinanet_unchanged():
    from focal_rpn.engine import Trainer

    faster = Trainer.build_model(tiny_cfg("quick_faster_rcnn_R18.yaml"))
    assert [type(m) for m in faster.roi_heads.box_pooler.level_poolers] == [FastROIAlign] * 4
    retina = Trainer.build_model(tiny_cfg("quick_retinanet_R18.yaml"))
    assert not any(isinstance(m, ROIAlign) for m in retina.modules())


# ------------------------------------------------ inference: the faster kernel, timed and cached
class _TimedKernels:
    """Both kernels of FastROIAlign with fake durations: each call advances a fake
    time.perf_counter by what ``ms`` says and is recorded in ``calls``."""

    def __init__(self, monkeypatch, ms):
        import focal_rpn.layers.path_timing as path_timing
        import focal_rpn.layers.roi_align as impl

        self.now, self.ms, self.calls = 0.0, ms, []
        monkeypatch.setattr(path_timing.time, "perf_counter", lambda: self.now)
        sparse, stock = impl.roi_align_cpu, ROIAlign.forward

        def timed_sparse(*args, **kwargs):
            self.now += self.ms["sparse"] / 1e3
            self.calls.append("sparse")
            return sparse(*args, **kwargs)

        def timed_stock(module, *args, **kwargs):
            self.now += self.ms["torchvision"] / 1e3
            self.calls.append("torchvision")
            return stock(module, *args, **kwargs)

        monkeypatch.setattr(impl, "roi_align_cpu", timed_sparse)
        monkeypatch.setattr(ROIAlign, "forward", timed_stock)


@pytest.fixture
def inference_tuner(monkeypatch):
    import focal_rpn.layers.roi_align as impl

    fresh = impl.ROIAlignPathTuner(rounds=1)
    monkeypatch.setattr(impl, "INFERENCE_TUNER", fresh)
    return fresh


@pytest.mark.parametrize("faster", ["sparse", "torchvision"])
def test_inference_takes_the_measured_faster_kernel_once_timed(faster, inference_tuner, monkeypatch, caplog):
    ms = {"sparse": 1.0, "torchvision": 5.0} if faster == "sparse" else {"sparse": 5.0, "torchvision": 1.0}
    kernels = _TimedKernels(monkeypatch, ms)
    m = FastROIAlign((7, 7), 1 / 8, 0, True)
    x = torch.randn(1, 16, 32, 32)
    rois = make_rois(50, 1, 256, min_wh=4, max_wh=120, seed=3)
    with caplog.at_level("INFO", logger="focal_rpn.layers.roi_align"):
        with torch.no_grad():
            first = m(x, rois)
            timed = list(kernels.calls)
            second = m(x, rois)
    assert sorted(set(timed)) == ["sparse", "torchvision"]  # both timed at the first call
    assert kernels.calls[len(timed):] == [faster]  # then the choice, without timing again
    (choice,) = inference_tuner.choices().values()
    assert choice.sparse == (faster == "sparse")
    expected = tv_roi_align(x, rois, (7, 7), 1 / 8, 0, True)
    torch.testing.assert_close(first, expected, **TOL)
    torch.testing.assert_close(second, expected, **TOL)
    logged = [r.getMessage() for r in caplog.records if "ROIAlign inference" in r.getMessage()]
    assert len(logged) == 1 and logged[0].endswith("sparse (focal_rpn)" if faster == "sparse" else "torchvision")


def test_a_near_tie_stays_on_torchvision(inference_tuner, monkeypatch):
    _TimedKernels(monkeypatch, {"sparse": 0.95, "torchvision": 1.0})  # 5% faster: within the margin
    with torch.no_grad():
        FastROIAlign((7, 7), 1 / 8, 0, True)(torch.randn(1, 8, 16, 16), make_rois(10, 1, 128, min_wh=4))
    (choice,) = inference_tuner.choices().values()
    assert not choice.sparse


def test_training_always_takes_the_sparse_kernel_untimed(inference_tuner, monkeypatch):
    kernels = _TimedKernels(monkeypatch, {"sparse": 5.0, "torchvision": 1.0})
    x = torch.randn(1, 8, 16, 16, requires_grad=True)
    FastROIAlign((7, 7), 1 / 8, 0, True)(x, make_rois(10, 1, 128, min_wh=4)).sum().backward()
    assert kernels.calls == ["sparse"] and not inference_tuner.choices()
    assert x.grad is not None


def test_inference_under_deterministic_algorithms_takes_torchvision_untimed(inference_tuner, monkeypatch):
    kernels = _TimedKernels(monkeypatch, {"sparse": 1.0, "torchvision": 5.0})
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.no_grad():
            FastROIAlign((7, 7), 1 / 8, 0, True)(torch.randn(1, 8, 16, 16), make_rois(10, 1, 128, min_wh=4))
    finally:
        torch.use_deterministic_algorithms(previous)
    assert kernels.calls == ["torchvision"] and not inference_tuner.choices()


def test_inference_kinds_of_call_are_timed_apart(inference_tuner, monkeypatch):
    _TimedKernels(monkeypatch, {"sparse": 1.0, "torchvision": 5.0})
    m = FastROIAlign((7, 7), 1 / 8, 0, True)
    with torch.no_grad():
        m(torch.randn(1, 8, 16, 16), make_rois(10, 1, 128, min_wh=4, seed=1))
        m(torch.randn(1, 8, 16, 16), make_rois(11, 1, 128, min_wh=4, seed=2))  # same bucket of rois
        m(torch.randn(1, 8, 16, 16), make_rois(200, 1, 128, min_wh=4, seed=3))  # another
        m(torch.randn(1, 8, 64, 64), make_rois(10, 1, 512, min_wh=4, seed=4))  # another map size
    assert len(inference_tuner.choices()) == 3


# ------------------------------------------------------- Trainer.build_model: channels-last
def _conv_weights_channels_last(model) -> bool:
    weights = [p for p in model.parameters() if p.dim() == 4]
    return bool(weights) and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)


@pytest.mark.parametrize("value,expected", [(None, True), ("auto", True), (True, True), (False, False)])
def test_trainer_builds_cpu_models_channels_last_per_config(value, expected):
    from focal_rpn.engine import Trainer

    cfg = tiny_cfg("quick_faster_rcnn_R18.yaml", ["MODEL.CHANNELS_LAST", value])
    model = Trainer.build_model(cfg)
    assert _conv_weights_channels_last(model) is expected
    model.eval()
    with torch.no_grad():  # and it still runs, detections of the same form
        (out,) = model(batched_inputs(num_images=1))
    assert out["instances"].pred_boxes.tensor.shape[1] == 4


def test_trainer_channels_last_is_the_same_model_up_to_rounding():
    from focal_rpn.engine import Trainer

    torch.manual_seed(0)
    plain = Trainer.build_model(tiny_cfg("quick_faster_rcnn_R18.yaml", ["MODEL.CHANNELS_LAST", False]))
    torch.manual_seed(0)
    fast = Trainer.build_model(tiny_cfg("quick_faster_rcnn_R18.yaml", ["MODEL.CHANNELS_LAST", True]))
    fast.load_state_dict(plain.state_dict())
    inputs = batched_inputs(num_images=2, num_boxes=3, seed=1)
    with EventStorage():
        torch.manual_seed(1)
        a = plain(inputs)
        torch.manual_seed(1)
        b = fast(inputs)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


def test_trainer_leaves_focal_retinanet_to_its_own_key():
    from focal_rpn.engine import Trainer

    cfg = tiny_cfg("retinanet_R50.yaml", ["MODEL.CHANNELS_LAST", True, "MODEL.FOCAL_RETINANET.CHANNELS_LAST", False])
    model = Trainer.build_model(cfg)
    assert model.channels_last is False and not _conv_weights_channels_last(model)


def test_bad_model_channels_last_names_the_key():
    from focal_rpn.engine import Trainer

    with pytest.raises(ValueError, match="MODEL.CHANNELS_LAST"):
        Trainer.build_model(tiny_cfg("quick_faster_rcnn_R18.yaml", ["MODEL.CHANNELS_LAST", "sometimes"]))

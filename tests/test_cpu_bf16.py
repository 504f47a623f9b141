"""bfloat16 autocast on CPU (focal_rpn.layers.cpu_bf16, MODEL.FOCAL_RETINANET.CPU_BF16): which
machines get it, what runs in bfloat16 and what stays float32."""
import copy

import pytest
import torch

from detectron2.utils.events import EventStorage

from focal_rpn.layers.cpu_bf16 import (
    check_cpu_bf16_mode,
    cpu_bf16_on,
    cpu_has_native_bf16,
    float32_outputs,
    strided_convs_fit_bf16,
)
from tiny_models import batched_inputs, tiny_model

BF16 = ["MODEL.FOCAL_RETINANET.CPU_BF16", True]
FP32 = ["MODEL.FOCAL_RETINANET.CPU_BF16", False]


def cpuinfo(tmp_path, flags):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: " + " ".join(flags) + "\n")
    return str(path)


needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                  reason="this torch build has no oneDNN (bfloat16 stays off)")


@needs_onednn
def test_native_bf16_follows_the_cpu_flags_and_the_onednn_cap(tmp_path):
    zen4 = cpuinfo(tmp_path, ["fpu", "avx2", "avx512f", "avx512_bf16", "avx512_vnni"])
    assert cpu_has_native_bf16(zen4, environ={})
    assert cpu_has_native_bf16(zen4, environ={"ONEDNN_MAX_CPU_ISA": "avx512_core_bf16"})
    # benchmarks/run.py --max-isa avx2 holds oneDNN below its bfloat16 instructions
    assert not cpu_has_native_bf16(zen4, environ={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert not cpu_has_native_bf16(zen4, environ={"DNNL_MAX_CPU_ISA": "AVX512_CORE"})
    avx2 = cpuinfo(tmp_path, ["fpu", "avx2", "fma"])
    assert not cpu_has_native_bf16(avx2, environ={})
    skylake = cpuinfo(tmp_path, ["avx2", "avx512f", "avx512bw", "avx512_vnni"])  # emulated only
    assert not cpu_has_native_bf16(skylake, environ={})
    amx = cpuinfo(tmp_path, ["avx2", "amx_tile", "amx_bf16"])
    assert cpu_has_native_bf16(amx, environ={})
    assert not cpu_has_native_bf16(str(tmp_path / "missing"), environ={})  # unknown: off


def test_modes_and_their_settlement():
    for auto in ("auto", "AUTO"):
        assert check_cpu_bf16_mode("K", auto) == "auto"
    assert check_cpu_bf16_mode("K", None) == "auto"  # the yacs default
    assert check_cpu_bf16_mode("K", True) is True and check_cpu_bf16_mode("K", False) is False
    with pytest.raises(ValueError, match=r"MODEL.FOCAL_RETINANET.CPU_BF16 = 'yes' is not allowed"):
        check_cpu_bf16_mode("MODEL.FOCAL_RETINANET.CPU_BF16", "yes")
    assert cpu_bf16_on("K", "auto", "cpu", native=True)
    assert not cpu_bf16_on("K", "auto", "cpu", native=False)
    assert not cpu_bf16_on("K", "auto", "cuda", native=True)  # GPUs: detectron2's SOLVER.AMP
    assert cpu_bf16_on("K", True, "cpu", native=False)  # forced: emulated, but on
    assert not cpu_bf16_on("K", True, "cuda:0")
    assert not cpu_bf16_on("K", False, "cpu", native=True)


def test_float32_outputs_casts_only_low_precision_floats():
    h = torch.ones(2, dtype=torch.bfloat16)
    d = torch.ones(2, dtype=torch.float64)
    i = torch.ones(2, dtype=torch.int64)
    out = float32_outputs([[h, d], [i]])
    assert [t.dtype for t in out[0]] == [torch.float32, torch.float64] and out[1][0] is i


def _train_losses(opts, inputs, with_hook=None):
    model = tiny_model("retinanet_R50.yaml", opts)
    model.train()
    if with_hook is not None:
        model.head.cls_score.register_forward_hook(with_hook)
    with EventStorage():
        losses = model(copy.deepcopy(inputs))
    return model, losses


def test_bf16_model_runs_the_head_in_bf16_and_the_losses_in_float32():
    inputs = batched_inputs(num_boxes=3)
    head_dtypes = []
    model, losses = _train_losses(BF16, inputs, lambda m, i, o: head_dtypes.append(o.dtype))
    assert model.cpu_bf16 is True
    assert set(head_dtypes) == {torch.bfloat16}  # the convolutions ran in bfloat16
    assert {v.dtype for v in losses.values()} == {torch.float32}
    assert model.loss_normalizer.dtype == torch.float32
    sum(losses.values()).backward()
    assert model.head.cls_score.weight.grad.dtype == torch.float32  # fp32 master weights
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # the same weights in float32: the same losses up to bfloat16's 8-bit mantissa
    _, fp32_losses = _train_losses(FP32, inputs)
    for key in losses:
        torch.testing.assert_close(losses[key], fp32_losses[key], rtol=0.05, atol=1e-3)
    fp32_head = []
    _train_losses(FP32, inputs, lambda m, i, o: fp32_head.append(o.dtype))
    assert set(fp32_head) == {torch.float32}  # and False means float32


def test_bf16_detections_are_float32_and_close_to_float32_ones():
    detections = {}
    for name, opts in (("bf16", BF16), ("fp32", FP32)):
        model = tiny_model("retinanet_R50.yaml", opts)
        with torch.no_grad():
            model.head.cls_score.bias.fill_(0.5)  # confident somewhere: detections not empty
        model.eval()
        with torch.no_grad():
            detections[name] = model(batched_inputs(num_images=1, num_boxes=0))[0]["instances"]
    bf16, fp32 = detections["bf16"], detections["fp32"]
    assert len(bf16) > 0 and bf16.scores.dtype == torch.float32
    assert bf16.pred_boxes.tensor.dtype == torch.float32
    # the best detection of each: the same score within bfloat16 rounding of the logits
    assert abs(bf16.scores.max().item() - fp32.scores.max().item()) < 0.02


def test_losses_stay_float32_under_an_outer_autocast():
    """What detectron2's AMPTrainer does on CUDA (autocast around the whole forward), on CPU:
    the focal losses of FocalRetinaNet and FocalRPN come out float32 all the same."""
    inputs = batched_inputs(num_boxes=3)
    for config in ("retinanet_R50.yaml", "faster_rcnn_R50_FL-RPN_sigmoid.yaml",
                   "faster_rcnn_R50_FL-RPN_softmax.yaml"):
        model = tiny_model(config, FP32)
        model.train()
        with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16):
            losses = model(copy.deepcopy(inputs))
        for key in ("loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"):
            if key in losses:
                assert losses[key].dtype == torch.float32, (config, key)
                assert torch.isfinite(losses[key])


def test_batches_fit_bf16_only_where_every_strided_conv_reads_2_pixels_or_more():
    # P3-P7 (largest stride 128): P7's stride-2 convolution reads P6 (stride 64)
    assert not strided_convs_fit_bf16(64, 64, 128)  # P6 is 1x1
    assert strided_convs_fit_bf16(65, 65, 128)  # P6 is 2x2
    assert not strided_convs_fit_bf16(800, 64, 128)  # one narrow side is enough to refuse
    assert not strided_convs_fit_bf16(64, 1333, 128)
    assert strided_convs_fit_bf16(512, 683, 128)
    assert not strided_convs_fit_bf16(16, 16, 32) and strided_convs_fit_bf16(17, 17, 32)


@needs_onednn
@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_strided_conv_weight_gradients_are_right_on_2_pixel_maps_and_up(channels_last):
    """What strided_convs_fit_bf16 relies on: oneDNN's bfloat16 weight gradient of a 3x3
    stride-2 convolution (RetinaNet's P6 and P7, ResNet's strided 3x3s) matches float32 on
    maps of 2 pixels a side and more. (On 1-pixel maps it does not, with torch 2.14.1.)"""
    g = torch.Generator().manual_seed(0)
    for height, width in ((2, 2), (2, 3), (3, 2), (2, 5), (4, 4), (7, 9)):
        x = torch.randn(2, 64, height, width, generator=g)
        w = torch.randn(64, 64, 3, 3, generator=g) * 0.01
        if channels_last:
            x, w = (t.contiguous(memory_format=torch.channels_last) for t in (x, w))
        grads = []
        for dtype in (torch.float32, torch.bfloat16):
            xx = x.to(dtype).detach().requires_grad_()
            ww = w.to(dtype).detach().requires_grad_()
            y = torch.nn.functional.conv2d(xx, ww, None, 2, 1)
            if dtype == torch.float32:
                dy = torch.randn(y.shape, generator=g)
            y.backward(dy.to(dtype))
            grads.append(ww.grad.float())
        error = ((grads[1] - grads[0]).norm() / grads[0].norm()).item()
        assert error < 0.05, (height, width, channels_last, error)


def _train_steps(model, inputs, steps=3):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    with EventStorage():
        for _ in range(steps):
            loss_dict = model(copy.deepcopy(inputs))
            loss = sum(loss_dict.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


@pytest.mark.parametrize("size, head_dtype", [(64, torch.float32), (96, torch.bfloat16)])
def test_small_batches_train_in_float32_and_larger_ones_in_bf16(size, head_dtype, caplog):
    """CPU_BF16 True on 64 px images: float32 for the batch (logged), finite training (in
    bfloat16, P7's weight gradient was 1e11-inf after one step); at 96 px, bfloat16."""
    model = tiny_model("retinanet_R50.yaml", BF16)
    model.train()
    head_dtypes = []
    model.head.cls_score.register_forward_hook(lambda m, i, o: head_dtypes.append(o.dtype))
    with caplog.at_level("INFO", logger="focal_rpn.modeling.retinanet"):
        losses = _train_steps(model, batched_inputs(num_boxes=3, size=size))
    assert set(head_dtypes) == {head_dtype}
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert all(torch.isfinite(p).all() for p in model.parameters())
    refused = [r.getMessage() for r in caplog.records if "runs in float32" in r.getMessage()]
    if size == 64:
        assert len(refused) == 1 and "64x64 px" in refused[0] and "over 64 px" in refused[0]
    else:
        assert not refused

"""Both models trace through detectron2's TracingAdapter and the traced outputs equal eager."""
import pytest
import torch

from detectron2.export import TracingAdapter

from tiny_models import IMAGE_SIZE, tiny_model

TRACE_CASES = [
    ("retinanet_R50.yaml", []),
    ("retinanet_R50.yaml", ["MODEL.FOCAL_RETINANET.ACTIVATION", "softmax"]),
    ("faster_rcnn_R50_FL-RPN_sigmoid.yaml", []),
    ("faster_rcnn_R50_FL-RPN_softmax.yaml", []),
]


def inference(model, inputs):
    """Detections (list of Instances) for a list of input dicts."""
    if hasattr(model, "roi_heads"):  # GeneralizedRCNN
        return model.inference(inputs, do_postprocess=False)
    return [output["instances"] for output in model(inputs)]


@pytest.mark.parametrize("config_file,opts", TRACE_CASES)
def test_trace_matches_eager(config_file, opts):
    model = tiny_model(config_file, opts).eval()
    if hasattr(model, "head"):  # make RetinaNet confident so that the outputs are not empty
        with torch.no_grad():
            if model.activation == "softmax":
                model.head.cls_score.bias.view(-1, model.num_logits)[:, -1] -= 8.0
            else:
                model.head.cls_score.bias.add_(4.0)
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE), generator=g).float()
    inputs = [{"image": image}]
    adapter = TracingAdapter(model, inputs, inference)
    with torch.no_grad():
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
        eager_outputs = adapter(*adapter.flattened_inputs)
        traced_outputs = traced(*adapter.flattened_inputs)
    assert len(eager_outputs) == len(traced_outputs) > 0
    assert eager_outputs[0].numel() > 0, "nothing detected: the comparison would be empty"
    for eager, trace in zip(eager_outputs, traced_outputs):
        torch.testing.assert_close(trace, eager)
    # and the traced model still answers a different image of the same size
    other = torch.randint(0, 256, (1, 3, IMAGE_SIZE, IMAGE_SIZE), generator=g).float()[0]
    with torch.no_grad():
        torch.testing.assert_close(traced(other), adapter(other))


def test_trace_of_a_bf16_model_is_float32():
    """CPU_BF16 on: eager inference runs in bfloat16, the traced graph in float32 (exported
    models do not depend on the CPU that exported them): it equals the float32 eager model."""
    model = tiny_model("retinanet_R50.yaml", ["MODEL.FOCAL_RETINANET.CPU_BF16", True]).eval()
    assert model.cpu_bf16 is True
    with torch.no_grad():
        model.head.cls_score.bias.add_(4.0)
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE), generator=g).float()
    adapter = TracingAdapter(model, [{"image": image}], inference)
    with torch.no_grad():
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
        traced_outputs = traced(*adapter.flattened_inputs)
        model.cpu_bf16 = False
        float32_outputs = adapter(*adapter.flattened_inputs)
    assert float32_outputs[0].numel() > 0
    for fp32, trace in zip(float32_outputs, traced_outputs):
        assert trace.dtype == fp32.dtype
        torch.testing.assert_close(trace, fp32)

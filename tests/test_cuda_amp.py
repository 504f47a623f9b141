"""The CUDA path (CI has no GPU: every test here is skipped there, with the reason):
detectron2's SOLVER.AMP (AMPTrainer: float16 autocast and a GradScaler) with FocalRetinaNet and
FocalRPN, and torch.compile of the backbone and head on CUDA."""
import copy
import itertools

import pytest
import torch

from detectron2.engine import AMPTrainer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from tiny_models import batched_inputs, tiny_cfg

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU (SOLVER.AMP and torch.compile on CUDA); this machine has none",
)

CONFIGS = ["retinanet_R50.yaml", "faster_rcnn_R50_FL-RPN_sigmoid.yaml",
           "faster_rcnn_R50_FL-RPN_softmax.yaml"]


def cuda_model(config_file, opts=()):
    # CPU_BF16 True: the CPU bfloat16 key must not touch a CUDA model
    cfg = tiny_cfg(config_file, ["MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", True,
                                 "MODEL.FOCAL_RETINANET.CPU_BF16", True, *opts])
    torch.manual_seed(0)
    model = build_model(cfg)
    assert next(model.parameters()).is_cuda
    return model


@pytest.mark.parametrize("config_file", CONFIGS)
def test_amp_trainer_trains_with_float32_focal_losses(config_file):
    model = cuda_model(config_file)
    model.train()
    losses_seen = []
    # float32 losses under AMPTrainer's float16 autocast: recorded by a forward hook
    model.register_forward_hook(lambda m, i, out: losses_seen.append(
        {k: v.dtype for k, v in out.items()}))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batch = batched_inputs(num_boxes=3)
    data = (copy.deepcopy(batch) for _ in itertools.count())
    trainer = AMPTrainer(model, data, optimizer)
    trainer.train(0, 3)
    assert len(losses_seen) == 3
    for dtypes in losses_seen:
        for key in ("loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"):
            if key in dtypes:
                assert dtypes[key] == torch.float32, (config_file, key)
    total = trainer.storage.history("total_loss").values()
    assert len(total) == 3 and all(torch.isfinite(torch.tensor(v)) for v, _ in total)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # the CPU bfloat16 key never touches a CUDA model
    if hasattr(model, "cpu_bf16"):
        assert model.cpu_bf16 is False


@pytest.mark.parametrize("config_file", CONFIGS)
def test_compiled_modules_train_and_predict_on_cuda(config_file):
    """torch.compile of the backbone (and of RetinaNet's head) on CUDA."""
    model = cuda_model(config_file)
    model.backbone = torch.compile(model.backbone)
    head = "head" if hasattr(model, "head") else None
    if head:
        model.head = torch.compile(model.head)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    for step in range(2):
        with EventStorage(step):
            losses = model(batched_inputs(num_boxes=3, seed=step))
        assert all(torch.isfinite(v) for v in losses.values())
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(batched_inputs(num_images=1, num_boxes=0))
    assert "instances" in out[0]

"""Proposal recall (AR@100, AR@1000) of the RPN inside a trained two-stage model.

``proposal_network(model)`` wraps the model's backbone and proposal generator (shared, not
copied) in detectron2's ``ProposalNetwork``; its outputs hold "proposals", for which
detectron2's COCOEvaluator reports ``box_proposals`` AR@100 and AR@1000 (all/small/medium/large).
"""
import contextlib
import logging

from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import ProposalNetwork
from torch.nn.parallel import DataParallel, DistributedDataParallel

logger = logging.getLogger(__name__)

#: proposals kept per image for the recall pass (AR@1000 needs 1000).
PROPOSAL_TOPK = 1000


def unwrap_model(model):
    while isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    return model


def has_proposal_generator(model):
    model = unwrap_model(model)
    return getattr(model, "proposal_generator", None) is not None and hasattr(model, "backbone")


def proposal_network(model):
    """A ``ProposalNetwork`` sharing ``model``'s backbone, proposal generator and pixel stats."""
    model = unwrap_model(model)
    if not has_proposal_generator(model):
        raise ValueError(f"{type(model).__name__} has no proposal_generator")
    net = ProposalNetwork(
        backbone=model.backbone,
        proposal_generator=model.proposal_generator,
        pixel_mean=model.pixel_mean.detach().flatten().tolist(),
        pixel_std=model.pixel_std.detach().flatten().tolist(),
    )
    # Shared submodules: keep the wrapper in the model's mode so that inference_on_dataset,
    # which restores the wrapper's mode afterwards, leaves the model's mode unchanged.
    net.train(model.training)
    return net.to(model.pixel_mean.device)


@contextlib.contextmanager
def post_nms_topk_test(proposal_generator, topk=PROPOSAL_TOPK):
    """Temporarily keep ``topk`` proposals per image at test time (MODEL.RPN.POST_NMS_TOPK_TEST)."""
    saved = getattr(proposal_generator, "post_nms_topk", None)
    if isinstance(saved, dict) and False in saved:
        proposal_generator.post_nms_topk = {**saved, False: topk}
    else:
        logger.warning("%s has no post_nms_topk: proposals evaluated with its own test topk",
                       type(proposal_generator).__name__)
    try:
        yield
    finally:
        if saved is not None:
            proposal_generator.post_nms_topk = saved


def evaluate_proposals(model, data_loader, evaluator, topk=PROPOSAL_TOPK):
    """Run the model's RPN alone on ``data_loader``; return ``evaluator``'s results, which for
    detectron2's COCOEvaluator hold {"box_proposals": {"AR@100": ..., "AR@1000": ...}}."""
    net = proposal_network(model)
    with post_nms_topk_test(net.proposal_generator, topk):
        return inference_on_dataset(net, data_loader, evaluator)

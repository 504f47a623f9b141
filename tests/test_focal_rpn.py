"""FocalRPN: labels every anchor, and its loss weights and normalisers checked by hand."""
import math

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

from tiny_models import IMAGE_SIZE, random_boxes, tiny_cfg, tiny_model

SIGMOID = "faster_rcnn_R50_FL-RPN_sigmoid.yaml"
SOFTMAX = "faster_rcnn_R50_FL-RPN_softmax.yaml"


def anchors_and_gt(rpn, num_gt=4, seed=0):
    features = [torch.zeros(1, 32, IMAGE_SIZE // s, IMAGE_SIZE // s) for s in (4, 8, 16, 32, 64)]
    anchors = rpn.anchor_generator(features)
    gt = Instances((IMAGE_SIZE, IMAGE_SIZE))
    gt.gt_boxes = Boxes(random_boxes(num_gt, generator=torch.Generator().manual_seed(seed)))
    gt.gt_classes = torch.zeros(num_gt, dtype=torch.long)
    return anchors, gt


def test_focal_rpn_labels_every_anchor_like_rpn_before_sampling():
    focal = tiny_model(SIGMOID).proposal_generator
    stock = build_model(tiny_cfg(SIGMOID, ["MODEL.PROPOSAL_GENERATOR.NAME", "RPN"])).proposal_generator
    anchors, gt = anchors_and_gt(focal)
    focal_labels = focal.label_and_sample_anchors(anchors, [gt])[0][0]
    torch.manual_seed(0)
    stock_labels = stock.label_and_sample_anchors(anchors, [gt])[0][0]

    # The reference: IoU >= 0.7 or best anchor of a gt box -> 1, < 0.3 -> 0, between -> -1.
    iou = pairwise_iou(gt.gt_boxes, Boxes.cat(anchors))
    _, expected = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)(iou)
    assert torch.equal(focal_labels.long(), expected.long())
    num_labelled = (focal_labels >= 0).sum().item()
    assert num_labelled > stock.batch_size_per_image, "FocalRPN subsampled"
    assert (stock_labels >= 0).sum().item() <= stock.batch_size_per_image
    sampled = stock_labels >= 0
    assert torch.equal(stock_labels[sampled], focal_labels[sampled])


def test_focal_rpn_honours_boundary_threshold():
    rpn = tiny_model(SIGMOID, ["MODEL.RPN.BOUNDARY_THRESH", 0]).proposal_generator
    anchors, gt = anchors_and_gt(rpn)
    labels = rpn.label_and_sample_anchors(anchors, [gt])[0][0]
    boxes = Boxes.cat(anchors).tensor
    outside = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > IMAGE_SIZE) | (
        boxes[:, 3] > IMAGE_SIZE
    )
    assert outside.any() and (~outside).any()
    assert (labels[outside] == -1).all()
    assert (labels[~outside] >= 0).sum() > rpn.batch_size_per_image


def hand_case():
    """Five anchors, labels 1, 0, -1, 0, 1: two positives."""
    anchors = torch.tensor(
        [[0, 0, 10, 10], [5, 5, 25, 25], [0, 0, 40, 20], [30, 30, 50, 60], [10, 10, 30, 30]],
        dtype=torch.float32,
    )
    gt_boxes = torch.tensor(
        [[1, 1, 11, 12], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [12, 8, 30, 33]],
        dtype=torch.float32,
    )
    labels = torch.tensor([1, 0, -1, 0, 1], dtype=torch.int8)
    deltas = torch.tensor(
        [[0.1, -0.2, 0.05, 0.3], [1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3], [-0.1, 0.2, 0.0, -0.3]]
    )
    return anchors, gt_boxes, labels, deltas


def expected_l1_box_loss(anchors, gt_boxes, deltas, labels):
    """Sum over positives of |predicted - target deltas| with unit weights (smooth L1, beta 0)."""
    total = 0.0
    for a, g, d, l in zip(anchors.tolist(), gt_boxes.tolist(), deltas.tolist(), labels.tolist()):
        if l != 1:
            continue
        aw, ah = a[2] - a[0], a[3] - a[1]
        ax, ay = a[0] + aw / 2, a[1] + ah / 2
        gw, gh = g[2] - g[0], g[3] - g[1]
        gx, gy = g[0] + gw / 2, g[1] + gh / 2
        target = [(gx - ax) / aw, (gy - ay) / ah, math.log(gw / aw), math.log(gh / ah)]
        total += sum(abs(p - t) for p, t in zip(d, target))
    return total


def focal_term(p_true, alpha_t, gamma=2.0):
    return -alpha_t * (1 - p_true) ** gamma * math.log(p_true)


@pytest.mark.parametrize("rpn_loss_weight", [1.0, 2.0])
def test_sigmoid_losses_by_hand(rpn_loss_weight):
    rpn = tiny_model(SIGMOID, ["MODEL.RPN.LOSS_WEIGHT", rpn_loss_weight]).proposal_generator
    anchors, gt_boxes, labels, deltas = hand_case()
    logits = torch.tensor([0.5, -1.0, 3.0, 2.0, -0.3])
    with EventStorage():
        losses = rpn.losses(
            [Boxes(anchors)], [logits[None]], [labels], [deltas[None]], [gt_boxes]
        )
    fl = 0.0
    for x, l in zip(logits.tolist(), labels.tolist()):
        p = 1 / (1 + math.exp(-x))
        if l == 1:
            fl += focal_term(p, 0.25)
        elif l == 0:
            fl += focal_term(1 - p, 0.75)
    num_pos = 2
    expected_cls = rpn_loss_weight * 0.1 * fl / num_pos
    expected_loc = rpn_loss_weight * expected_l1_box_loss(anchors, gt_boxes, deltas, labels) / (
        2 * num_pos
    )
    assert losses["loss_rpn_cls"].item() == pytest.approx(expected_cls, rel=1e-5)
    assert losses["loss_rpn_loc"].item() == pytest.approx(expected_loc, rel=1e-5)


def test_softmax_losses_by_hand():
    rpn = tiny_model(SOFTMAX, ["MODEL.FOCAL_RPN.LOSS_WEIGHT", 0.5]).proposal_generator
    anchors, gt_boxes, labels, deltas = hand_case()
    pairs = torch.tensor([[0.2, 0.5], [1.0, -1.0], [0.0, 3.0], [-2.0, 2.0], [0.3, -0.3]])
    with EventStorage():
        losses = rpn.losses(
            [Boxes(anchors)], [pairs.reshape(1, -1)], [labels], [deltas[None]], [gt_boxes]
        )
    fl = 0.0
    for (b, o), l in zip(pairs.tolist(), labels.tolist()):
        p_object = math.exp(o) / (math.exp(o) + math.exp(b))
        if l == 1:
            fl += focal_term(p_object, 0.25)
        elif l == 0:
            fl += focal_term(1 - p_object, 0.75)
    assert losses["loss_rpn_cls"].item() == pytest.approx(0.5 * fl / 2, rel=1e-5)
    expected_loc = expected_l1_box_loss(anchors, gt_boxes, deltas, labels) / 4
    assert losses["loss_rpn_loc"].item() == pytest.approx(expected_loc, rel=1e-5)


def test_no_positive_anchors_normalises_by_one():
    rpn = tiny_model(SIGMOID).proposal_generator
    anchors, gt_boxes, _, deltas = hand_case()
    labels = torch.tensor([0, 0, -1, 0, 0], dtype=torch.int8)
    logits = torch.tensor([0.5, -1.0, 3.0, 2.0, -0.3])
    with EventStorage():
        losses = rpn.losses([Boxes(anchors)], [logits[None]], [labels], [deltas[None]], [gt_boxes])
    fl = sum(
        focal_term(1 - 1 / (1 + math.exp(-x)), 0.75)
        for x, l in zip(logits.tolist(), labels.tolist())
        if l == 0
    )
    assert losses["loss_rpn_cls"].item() == pytest.approx(0.1 * fl, rel=1e-5)
    assert losses["loss_rpn_loc"].item() == 0.0


def test_softmax_proposals_ranked_by_object_probability():
    rpn = tiny_model(SOFTMAX).proposal_generator.eval()
    pairs = torch.tensor([[[0.0, 1.0], [3.0, 3.5], [-1.0, -2.0]]])  # (N=1, R=3, 2)
    scores = rpn._objectness_scores([pairs.reshape(1, -1)])[0]
    p_object = pairs.softmax(dim=-1)[..., 1]
    assert torch.equal(scores.argsort(descending=True), p_object.argsort(descending=True))
    torch.testing.assert_close(scores.sigmoid(), p_object)


def test_initial_objectness_follows_prior():
    sig = tiny_model(SIGMOID).proposal_generator.rpn_head.objectness_logits
    assert torch.allclose(sig.bias.sigmoid(), torch.tensor(0.01), atol=1e-6)
    soft = tiny_model(SOFTMAX).proposal_generator.rpn_head.objectness_logits
    assert soft.out_channels == 2 * sig.out_channels
    assert torch.allclose(soft.bias.view(-1, 2).softmax(-1)[:, 1], torch.tensor(0.01), atol=1e-6)

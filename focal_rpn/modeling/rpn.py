"""FocalRPN: the region proposal network of FL-RPN (Chen, Song, Jiang, PRCV 2018).

detectron2's RPN with its 1:1 positive/negative sampling removed: every labelled anchor is in
the objectness loss, a focal loss weighted by lambda (MODEL.FOCAL_RPN.LOSS_WEIGHT) and divided
by the number of positive anchors; the box loss is divided by 2 x that number.

Shape vocabulary:
    N: images in the batch          L: feature levels (P2-P6)
    A: anchors per position         R: anchors of one image over all levels
"""
import math
from typing import Dict, List

import torch
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY
from detectron2.modeling.proposal_generator.rpn import RPN
from detectron2.structures import Boxes
from detectron2.utils.events import get_event_storage

from ..config import check_activation, check_alpha, check_gamma, check_positive, check_probability
from ..d2_adapter import RPNWithAnchorSamplingSeam, dense_box_regression_loss
from ..layers.cpu_bf16 import float32_outputs
from ..losses import sigmoid_focal_loss_with_labels, softmax_focal_loss

__all__ = ["FocalRPN"]

# Objectness logits of the softmax form, per anchor: (background, object).
BACKGROUND, OBJECT = 0, 1


def widen_objectness_to_two_logits(rpn_head: nn.Module, prior_prob: float) -> None:
    """Replace the head's A-channel ``objectness_logits`` conv by a 2A-channel one.

    Channel 2a + c holds logit c (0 background, 1 object) of anchor a, so after detectron2's
    permute/flatten the objectness of one image is laid out as (Hi * Wi * A, 2). Biases start
    so that p(object) = prior_prob.
    """
    conv = getattr(rpn_head, "objectness_logits", None)
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(
            "MODEL.FOCAL_RPN.ACTIVATION = 'softmax' needs an RPN head with an "
            f"'objectness_logits' Conv2d (as StandardRPNHead); got {type(rpn_head).__name__}"
        )
    two_logits = nn.Conv2d(
        conv.in_channels, 2 * conv.out_channels, kernel_size=conv.kernel_size,
        stride=conv.stride, padding=conv.padding,
    )
    nn.init.normal_(two_logits.weight, std=0.01)
    with torch.no_grad():
        bias = two_logits.bias.view(-1, 2)
        bias[:, OBJECT] = 0.0
        bias[:, BACKGROUND] = math.log((1.0 - prior_prob) / prior_prob)
    rpn_head.objectness_logits = two_logits.to(conv.weight.device)


def init_sigmoid_objectness_bias(rpn_head: nn.Module, prior_prob: float) -> None:
    """Start every anchor at p(object) = prior_prob, as RetinaNet's class-bias prior."""
    conv = getattr(rpn_head, "objectness_logits", None)
    if isinstance(conv, nn.Conv2d) and conv.bias is not None:
        nn.init.constant_(conv.bias, -math.log((1.0 - prior_prob) / prior_prob))


@PROPOSAL_GENERATOR_REGISTRY.register()
class FocalRPN(RPNWithAnchorSamplingSeam, RPN):
    """RPN trained with a focal objectness loss over all labelled anchors (FL-RPN).

    Anchors are labelled exactly as detectron2's RPN labels them before sampling (IoU >= 0.7 or
    best anchor of a ground-truth box: 1; IoU < 0.3: 0; between, or crossing the image border
    by more than BOUNDARY_THRESH: -1), but none is subsampled away.

    Losses, with N_pos the positive anchors of the batch (at least 1) and w the RPN loss
    weights of detectron2 (RPN.LOSS_WEIGHT, RPN.BBOX_REG_LOSS_WEIGHT):
        loss_rpn_cls = w_cls * lambda * sum over labelled anchors of FL / N_pos
        loss_rpn_loc = w_loc * sum over positive anchors of the box loss / (2 N_pos)

    ``activation="sigmoid"``: one objectness logit per anchor. ``"softmax"``: two per anchor
    (background, object), trained with the softmax focal loss; proposals are ranked by
    logit(object) - logit(background), the log-odds of p(object), so ROI heads and detectron2's
    proposal post-processing work unchanged.
    """

    @configurable
    def __init__(
        self,
        *,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        focal_loss_weight: float = 0.1,
        activation: str = "sigmoid",
        prior_prob: float = 0.01,
        **kwargs,
    ):
        """
        Args:
            focal_loss_alpha, focal_loss_gamma: of the objectness focal loss; alpha = -1: off.
            focal_loss_weight: lambda, the weight of the objectness loss.
            activation: "sigmoid" (one logit per anchor) or "softmax" (two).
            prior_prob: initial p(object) of every anchor (sets the objectness bias).
            kwargs: the arguments of detectron2's ``RPN``.
        """
        super().__init__(**kwargs)
        check_activation("activation", activation)
        check_alpha("focal_loss_alpha", focal_loss_alpha)
        check_gamma("focal_loss_gamma", focal_loss_gamma)
        check_positive("focal_loss_weight", focal_loss_weight)
        check_probability("prior_prob", prior_prob)
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.focal_loss_weight = focal_loss_weight
        self.activation = activation
        if activation == "softmax":
            widen_objectness_to_two_logits(self.rpn_head, prior_prob)
        else:
            init_sigmoid_objectness_bias(self.rpn_head, prior_prob)

    @classmethod
    def from_config(cls, cfg, input_shape):
        node = cfg.MODEL.FOCAL_RPN
        check_activation("MODEL.FOCAL_RPN.ACTIVATION", node.ACTIVATION)
        check_alpha("MODEL.FOCAL_RPN.ALPHA", node.ALPHA)
        check_gamma("MODEL.FOCAL_RPN.GAMMA", node.GAMMA)
        check_positive("MODEL.FOCAL_RPN.LOSS_WEIGHT", node.LOSS_WEIGHT)
        check_probability("MODEL.FOCAL_RPN.PRIOR_PROB", node.PRIOR_PROB)
        ret = super().from_config(cfg, input_shape)
        ret.update(
            focal_loss_alpha=node.ALPHA,
            focal_loss_gamma=node.GAMMA,
            focal_loss_weight=node.LOSS_WEIGHT,
            activation=node.ACTIVATION,
            prior_prob=node.PRIOR_PROB,
        )
        return ret

    def sample_anchor_labels(self, label: Tensor) -> Tensor:
        """No sampling: every anchor keeps its label (1, 0 or -1)."""
        return label

    def _objectness_scores(self, pred_objectness_logits: List[Tensor]) -> List[Tensor]:
        """(N, Hi*Wi*A) sigmoid logits, or (N, Hi*Wi*A*2) softmax pairs -> (N, Hi*Wi*A) scores
        that rank anchors by p(object)."""
        if self.activation == "sigmoid":
            return pred_objectness_logits
        scores = []
        for logits in pred_objectness_logits:
            pairs = logits.view(logits.shape[0], -1, 2)
            scores.append(pairs[:, :, OBJECT] - pairs[:, :, BACKGROUND])
        return scores

    def predict_proposals(self, anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes):
        scores = self._objectness_scores(pred_objectness_logits)
        return super().predict_proposals(anchors, scores, pred_anchor_deltas, image_sizes)

    def losses(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[Tensor],
        gt_labels: List[Tensor],
        pred_anchor_deltas: List[Tensor],
        gt_boxes: List[Tensor],
    ) -> Dict[str, Tensor]:
        """
        Args:
            anchors (list[Boxes]): L Boxes, level i of shape (Hi * Wi * A, 4).
            pred_objectness_logits (list[Tensor]): L tensors of shape (N, Hi * Wi * A), or
                (N, Hi * Wi * A * 2) with (background, object) pairs for "softmax".
            gt_labels (list[Tensor]): N tensors of shape (R,), values 1 (object),
                0 (background), -1 (ignored).
            pred_anchor_deltas (list[Tensor]): L tensors of shape (N, Hi * Wi * A, 4).
            gt_boxes (list[Tensor]): N tensors of shape (R, 4).

        Returns:
            dict[str, Tensor]: scalar "loss_rpn_cls" and "loss_rpn_loc", in float32 also under
            mixed precision (SOLVER.AMP): the head's outputs are cast to float32 and the losses
            computed with autocast off (a sum over all anchors can overflow float16).
        """
        device_type = gt_labels[0].device.type
        with torch.autocast(device_type, enabled=False):
            return self._float32_losses(
                anchors, float32_outputs(pred_objectness_logits), gt_labels,
                float32_outputs(pred_anchor_deltas), gt_boxes,
            )

    def _float32_losses(self, anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas,
                        gt_boxes) -> Dict[str, Tensor]:
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = gt_labels == 1
        num_pos_anchors = pos_mask.sum().item()
        num_neg_anchors = (gt_labels == 0).sum().item()
        storage = get_event_storage()
        storage.put_scalar("rpn/num_pos_anchors", num_pos_anchors / num_images)
        storage.put_scalar("rpn/num_neg_anchors", num_neg_anchors / num_images)
        normalizer = max(num_pos_anchors, 1)

        labels = gt_labels.reshape(-1).long()  # (N * R,); detectron2 labels RPN anchors in int8
        if self.activation == "sigmoid":
            # One logit, class 0 = object; label 1 (= K) is background, -1 ignored.
            class_labels = torch.where(labels == 1, 0, torch.where(labels == 0, 1, -1))
            logits = cat(pred_objectness_logits, dim=1).reshape(-1, 1)  # (N * R, 1)
            objectness_loss = sigmoid_focal_loss_with_labels(
                logits, class_labels, alpha=self.focal_loss_alpha, gamma=self.focal_loss_gamma,
                reduction="sum",
            )
        else:
            # Labels 1 (OBJECT), 0 (BACKGROUND), -1 (ignored) index the logit pairs directly.
            logits = cat(pred_objectness_logits, dim=1).reshape(-1, 2)  # (N * R, 2)
            objectness_loss = softmax_focal_loss(
                logits, labels, alpha=self.focal_loss_alpha, gamma=self.focal_loss_gamma,
                reduction="sum", background_index=BACKGROUND,
            )

        localization_loss = dense_box_regression_loss(
            anchors,
            self.box2box_transform,
            pred_anchor_deltas,
            gt_boxes,
            pos_mask,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        losses = {
            "loss_rpn_cls": self.focal_loss_weight * objectness_loss / normalizer,
            "loss_rpn_loc": localization_loss / (2 * normalizer),
        }
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

"""FocalRetinaNet: detectron2's RetinaNet with a fast focal loss, a softmax variant and a
loss normaliser that survives ``--resume``.

Shape vocabulary:
    N: images in the batch          L: feature levels (P3-P7)
    A: anchors per position (9)     K: object classes
    C: class logits per anchor: K (sigmoid) or K + 1 (softmax, background last)
    R: anchors of one image over all levels, sum over levels of Hi * Wi * A
"""
import logging
import math
from typing import List, Optional, Union

import torch
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage

from ..config import (
    channels_last_on,
    check_activation,
    check_alpha,
    check_channels_last_mode,
    check_gamma,
    check_probability,
)
from ..d2_adapter import dense_box_regression_loss, transpose_dense_predictions
from ..layers import use_level_batch_norms, use_winograd_convs
from ..layers.cpu_bf16 import (
    check_cpu_bf16_mode,
    cpu_bf16_autocast,
    cpu_bf16_on,
    float32_outputs,
    strided_convs_fit_bf16,
)
from ..layers.winograd import check_winograd_mode
from ..losses import sigmoid_focal_loss_with_labels, softmax_focal_loss

__all__ = ["FocalRetinaNet"]

logger = logging.getLogger(__name__)

#: detectron2's RetinaNet starts its EMA of the number of foreground anchors at this value.
INITIAL_LOSS_NORMALIZER = 100.0
LOSS_NORMALIZER_MOMENTUM = 0.9


def init_softmax_class_bias(cls_score: nn.Conv2d, num_classes: int, prior_prob: float):
    """Set the bias of a (A * (K + 1))-channel class conv so that p(background) = 1 - prior_prob.

    The K foreground logits get bias 0 and the background logit b with
    e^b / (e^b + K) = 1 - prior_prob, i.e. b = log(K * (1 - prior_prob) / prior_prob); each
    foreground class then starts at prior_prob / K.
    """
    num_logits = num_classes + 1
    if cls_score.out_channels % num_logits != 0:
        raise ValueError(
            f"class conv has {cls_score.out_channels} channels, not a multiple of K + 1 = "
            f"{num_logits}"
        )
    background_bias = math.log(num_classes * (1.0 - prior_prob) / prior_prob)
    with torch.no_grad():
        bias = cls_score.bias.view(-1, num_logits)  # (A, K + 1), background last
        bias.zero_()
        bias[:, num_classes] = background_bias


def check_head_logits(head: nn.Module, num_anchors: int, num_classes: int, activation: str):
    """Raise ValueError unless the head's class conv predicts K (sigmoid) or K + 1 (softmax)
    logits for each of the A anchors per position; a head without a ``cls_score`` conv is
    not checked."""
    cls_score = getattr(head, "cls_score", None)
    if not isinstance(cls_score, nn.Conv2d):
        return
    num_logits = num_classes + (1 if activation == "softmax" else 0)
    if cls_score.out_channels != num_anchors * num_logits:
        softmax = activation == "softmax"
        raise ValueError(
            f"activation = {activation!r} with num_classes = {num_classes} needs a head with "
            f"{num_logits} class logits for each of the {num_anchors} anchors "
            f"({num_anchors * num_logits} channels); its cls_score has "
            f"{cls_score.out_channels}. The head's num_classes must be "
            + ("num_classes + 1 (background last)" if softmax else "num_classes")
        )


@META_ARCH_REGISTRY.register()
class FocalRetinaNet(RetinaNet):
    """RetinaNet (Lin et al. 2017) trained with focal_rpn's focal losses.

    ``activation="sigmoid"`` is the paper's model: with the same weights it gives the same
    losses and detections as detectron2's ``RetinaNet`` (state dicts load into each other
    through ``DetectionCheckpointer``). ``activation="softmax"``: the class subnet predicts
    K + 1 logits per anchor (background last), trained with the softmax focal loss; scores at
    inference are the K foreground probabilities.

    The EMA of the number of foreground anchors that normalises the losses is a buffer
    (``loss_normalizer``), so it is saved in checkpoints and a resumed run continues with it.

    The head's 3x3 convolutions are ``focal_rpn.layers.WinogradConv2d`` unless ``winograd`` is
    False: the same parameters, computed as Winograd F(4x4, 3x3) on CPU where that was measured
    faster on this machine (``winograd="auto"``, the default) or wherever supported
    (``winograd=True``), as ``nn.Conv2d`` everywhere else (GPU included).

    With ``channels_last=True`` the convolution weights and the input images are in
    channels-last (NHWC) memory format, which the convolutions then keep: the same results
    (within float rounding), without oneDNN's layout reorders around every convolution on CPU.
    ``"auto"`` (the default) does that where the model runs on CPU and keeps the layout as
    built elsewhere (GPU); it is settled by ``from_config`` from MODEL.DEVICE, or else at the
    first forward from the model's device (logged).

    With ``cpu_bf16`` on, the backbone and the head run under bfloat16 autocast on CPU
    (``focal_rpn.layers.cpu_bf16``): their convolutions in bfloat16, about twice as fast where
    the CPU has native bfloat16. Everything after the head stays in float32: the head's outputs
    are cast to float32, and anchor matching, the focal loss, the loss normaliser, the box
    regression loss and box decoding run with autocast off (also under detectron2's
    SOLVER.AMP on CUDA). ``"auto"`` (the default) is on for a model on a CPU with native
    bfloat16 and off elsewhere; settled like ``channels_last``, logged. A batch whose smaller
    side is at most half the backbone's largest stride (64 px for P3-P7) runs in float32: there
    oneDNN's bfloat16 weight gradients of the strided convolutions are wrong (logged once;
    ``focal_rpn.layers.cpu_bf16.strided_convs_fit_bf16``).
    """

    @configurable
    def __init__(
        self,
        *,
        activation: str = "sigmoid",
        winograd: Union[str, bool] = "auto",
        channels_last: Union[str, bool] = "auto",
        cpu_bf16: Union[str, bool] = "auto",
        softmax_prior_prob: Optional[float] = None,
        **kwargs,
    ):
        """
        Args:
            activation: "sigmoid" or "softmax". With "softmax", ``head`` must predict
                ``num_classes + 1`` logits per anchor.
            winograd: the mode of the head's 3x3 convolutions: "auto" (``WinogradConv2d``
                times both paths at first use), True (always Winograd on CPU float32) or
                False (plain ``nn.Conv2d``).
            channels_last: keep the weights of 4-d parameters and the images in
                channels-last memory format: True, False, or "auto" (on CPU only).
            cpu_bf16: bfloat16 autocast of the backbone and head on CPU: True, False, or
                "auto" (on a CPU with native bfloat16 only).
            softmax_prior_prob: with "softmax", set the head's class bias so that
                p(background) = 1 - softmax_prior_prob at start (for heads built directly,
                as in lazy configs: RetinaNetHead starts every logit at its prior_prob). None:
                keep the bias as built (``from_config`` builds the head with it already set).
            kwargs: the arguments of detectron2's ``RetinaNet``.
        """
        check_activation("activation", activation)
        channels_last = check_channels_last_mode("channels_last", channels_last)
        cpu_bf16 = check_cpu_bf16_mode("cpu_bf16", cpu_bf16)
        super().__init__(**kwargs)
        self.cpu_bf16 = cpu_bf16  # "auto" until the device is known
        self._logged_bf16_small_batch = False
        check_head_logits(
            self.head, self.anchor_generator.num_cell_anchors[0], self.num_classes, activation
        )
        if softmax_prior_prob is not None:
            check_probability("softmax_prior_prob", softmax_prior_prob)
            if activation != "softmax":
                raise ValueError(
                    f"softmax_prior_prob = {softmax_prior_prob!r} is only for activation = "
                    f"'softmax', not {activation!r} (RetinaNetHead's prior_prob sets the bias)"
                )
            init_softmax_class_bias(self.head.cls_score, self.num_classes, softmax_prior_prob)
        use_level_batch_norms(self.head)  # the same function in one fused op (see its module)
        winograd = check_winograd_mode("winograd", winograd)
        if winograd is not False:
            use_winograd_convs(self.head, winograd)
        self.channels_last = channels_last  # "auto" until the device is known
        if channels_last is True:
            self.to(memory_format=torch.channels_last)
        check_alpha("focal_loss_alpha", self.focal_loss_alpha)
        check_gamma("focal_loss_gamma", self.focal_loss_gamma)
        self.activation = activation
        self.num_logits = self.num_classes + (1 if activation == "softmax" else 0)
        self.register_buffer(
            "loss_normalizer", torch.tensor(INITIAL_LOSS_NORMALIZER)
        )

    @classmethod
    def from_config(cls, cfg):
        activation = cfg.MODEL.FOCAL_RETINANET.ACTIVATION
        check_activation("MODEL.FOCAL_RETINANET.ACTIVATION", activation)
        check_alpha("MODEL.RETINANET.FOCAL_LOSS_ALPHA", cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA)
        check_gamma("MODEL.RETINANET.FOCAL_LOSS_GAMMA", cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA)
        check_probability("MODEL.RETINANET.PRIOR_PROB", cfg.MODEL.RETINANET.PRIOR_PROB)
        winograd = check_winograd_mode(
            "MODEL.FOCAL_RETINANET.WINOGRAD", cfg.MODEL.FOCAL_RETINANET.WINOGRAD
        )
        channels_last = channels_last_on(  # settled now, before an optimizer or DDP sees them
            "MODEL.FOCAL_RETINANET.CHANNELS_LAST", cfg.MODEL.FOCAL_RETINANET.CHANNELS_LAST,
            cfg.MODEL.DEVICE,
        )
        ret = super().from_config(cfg)
        ret["activation"] = activation
        ret["winograd"] = winograd
        ret["channels_last"] = channels_last
        ret["cpu_bf16"] = cpu_bf16_on(  # settled now: logged once, with the config's key
            "MODEL.FOCAL_RETINANET.CPU_BF16", cfg.MODEL.FOCAL_RETINANET.CPU_BF16, cfg.MODEL.DEVICE
        )
        if activation == "softmax":
            ret["head"] = _build_softmax_head(cfg, ret["backbone"])
        return ret

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints of detectron2's RetinaNet have no normaliser: keep the initial value
        # instead of reporting a missing key, so they load strictly.
        key = prefix + "loss_normalizer"
        if key not in state_dict:
            state_dict[key] = self.loss_normalizer.detach().clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _settle_channels_last(self) -> None:
        """channels_last "auto": channels-last from now on if the model is on CPU."""
        self.channels_last = self.device.type == "cpu"
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        logger.info("FocalRetinaNet channels_last 'auto' on %s -> %s", self.device, self.channels_last)

    def _bf16_autocast(self, batched_inputs):
        """bfloat16 autocast for this forward, or a context that changes nothing: on for a CPU
        model with ``cpu_bf16`` (settled at the first forward where "auto") and a batch of
        images large enough (:meth:`_bf16_fits`), never while tracing or scripting (exported
        graphs stay float32)."""
        if self.cpu_bf16 == "auto":
            self.cpu_bf16 = cpu_bf16_on("cpu_bf16", "auto", self.device)
        exporting = (torch.jit.is_tracing() or torch.jit.is_scripting()
                     or _compiler_is_exporting())
        return cpu_bf16_autocast(
            self.cpu_bf16 and self.device.type == "cpu" and not exporting
            and self._bf16_fits(batched_inputs)
        )

    def _bf16_fits(self, batched_inputs) -> bool:
        """Whether the batch is large enough for bfloat16 (``strided_convs_fit_bf16`` with the
        backbone's largest stride). The unpadded images decide: padding only makes the
        batch larger, so this errs on the float32 side. Logs the first refusal."""
        height = max(x["image"].shape[-2] for x in batched_inputs)
        width = max(x["image"].shape[-1] for x in batched_inputs)
        max_stride = max(shape.stride for shape in self.backbone.output_shape().values())
        fits = strided_convs_fit_bf16(height, width, max_stride)
        if not fits and not self._logged_bf16_small_batch:
            self._logged_bf16_small_batch = True
            logger.info(
                "FocalRetinaNet: a batch of %dx%d px runs in float32, not bfloat16 (logged "
                "once): bfloat16 needs both sides over %d px, half the largest stride %d, as "
                "oneDNN's bfloat16 weight gradients of strided convolutions on 1-pixel maps are "
                "wrong", height, width, max_stride // 2, max_stride,
            )
        return fits

    def forward(self, batched_inputs):
        """detectron2's forward, the backbone and head under bfloat16 autocast where
        ``cpu_bf16`` is on (see the class docstring); the losses and detections in float32."""
        with self._bf16_autocast(batched_inputs):
            return super().forward(batched_inputs)

    def _float32_after_head(self):
        """Autocast off (CPU's or CUDA's) for what follows the head: matching, losses, decoding."""
        return torch.autocast(self.device.type, enabled=False)

    def preprocess_image(self, batched_inputs):
        if self.channels_last == "auto":
            self._settle_channels_last()
        images = super().preprocess_image(batched_inputs)  # ImageList, tensor (N, 3, H, W)
        if self.channels_last is True:
            images.tensor = images.tensor.contiguous(memory_format=torch.channels_last)
        return images

    def forward_training(self, images, features, predictions, gt_instances):
        with self._float32_after_head():
            pred_logits, pred_anchor_deltas = transpose_dense_predictions(
                self, float32_outputs(predictions), [self.num_logits, 4]
            )
            anchors = self.anchor_generator(features)
            gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
            return self.losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)

    @torch.no_grad()
    def _update_loss_normalizer(self, num_pos_anchors: int) -> Tensor:
        """EMA of max(num_pos_anchors, 1), as detectron2's RetinaNet, kept in a buffer. Returns
        the updated value (0-dim tensor)."""
        self.loss_normalizer.mul_(LOSS_NORMALIZER_MOMENTUM).add_(
            (1.0 - LOSS_NORMALIZER_MOMENTUM) * max(num_pos_anchors, 1)
        )
        return self.loss_normalizer.clone()

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        """
        Args:
            anchors (list[Boxes]): L Boxes, level i of shape (Hi * Wi * A, 4).
            pred_logits (list[Tensor]): L tensors of shape (N, Hi * Wi * A, C).
            gt_labels (list[Tensor]): N tensors of shape (R,), values in {-1 (ignored),
                0..K-1 (foreground class), K (background)}; from :meth:`label_anchors`.
            pred_anchor_deltas (list[Tensor]): L tensors of shape (N, Hi * Wi * A, 4).
            gt_boxes (list[Tensor]): N tensors of shape (R, 4), matched ground-truth boxes.

        Returns:
            dict[str, Tensor]: scalar "loss_cls" and "loss_box_reg", both divided by the EMA
            of the number of foreground anchors.
        """
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_pos_anchors = pos_mask.sum().item()
        get_event_storage().put_scalar("num_pos_anchors", num_pos_anchors / num_images)
        normalizer = self._update_loss_normalizer(num_pos_anchors)

        logits = cat(pred_logits, dim=1).reshape(-1, self.num_logits)  # (N * R, C)
        labels = gt_labels.reshape(-1)  # (N * R,)
        if self.activation == "sigmoid":
            loss_cls = sigmoid_focal_loss_with_labels(
                logits, labels, alpha=self.focal_loss_alpha, gamma=self.focal_loss_gamma,
                reduction="sum",
            )
        else:
            loss_cls = softmax_focal_loss(
                logits, labels, alpha=self.focal_loss_alpha, gamma=self.focal_loss_gamma,
                reduction="sum", background_index=self.num_classes,
            )

        loss_box_reg = dense_box_regression_loss(
            anchors,
            self.box2box_transform,
            pred_anchor_deltas,
            gt_boxes,
            pos_mask,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        normalizer = normalizer.to(loss_cls.dtype)
        return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box_reg / normalizer}

    def forward_inference(
        self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]]
    ):
        """detectron2's RetinaNet inference with this model's class probabilities (sigmoid, or
        the K foreground columns of the softmax). Unlike detectron2's, it leaves the head's
        outputs as they are: its in-place ``sigmoid_`` on a per-image view would turn the
        logits into probabilities wherever the head's output is channels-last (there the
        view is no copy), under the eyes of any forward hook that keeps them. Float32 from the
        head's outputs on (see the class docstring)."""
        with self._float32_after_head():
            return self._detections(images, features, float32_outputs(predictions))

    def _detections(self, images: ImageList, features: List[Tensor], predictions):
        pred_logits, pred_anchor_deltas = transpose_dense_predictions(
            self, predictions, [self.num_logits, 4]
        )  # L tensors (N, Hi * Wi * A, C) and (N, Hi * Wi * A, 4)
        anchors = self.anchor_generator(features)
        results: List[Instances] = []
        for img_idx, image_size in enumerate(images.image_sizes):
            scores_per_image = [self._class_probabilities(x[img_idx]) for x in pred_logits]
            deltas_per_image = [x[img_idx] for x in pred_anchor_deltas]
            results.append(
                self.inference_single_image(anchors, scores_per_image, deltas_per_image, image_size)
            )
        return results

    def _class_probabilities(self, logits: Tensor) -> Tensor:
        """(R_i, C) logits of one image and level -> (R_i, K) class probabilities, new memory."""
        if self.activation == "sigmoid":
            return logits.sigmoid()
        return logits.softmax(dim=-1)[:, : self.num_classes]  # background column dropped


def _compiler_is_exporting() -> bool:
    """``torch.compiler.is_exporting()`` (torch.export, dynamo-based ONNX export), False on a
    torch without it."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_exporting")
                and compiler.is_exporting())


def _build_softmax_head(cfg, backbone) -> RetinaNetHead:
    """detectron2's RetinaNetHead with K + 1 class logits per anchor, background last."""
    backbone_shape = backbone.output_shape()
    feature_shapes = [backbone_shape[f] for f in cfg.MODEL.RETINANET.IN_FEATURES]
    head_args = RetinaNetHead.from_config(cfg, feature_shapes)
    num_classes = head_args["num_classes"]
    head_args["num_classes"] = num_classes + 1
    head = RetinaNetHead(**head_args)
    init_softmax_class_bias(head.cls_score, num_classes, cfg.MODEL.RETINANET.PRIOR_PROB)
    return head

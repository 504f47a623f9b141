"""A ResNet-18/34 FPN backbone of any width, for CPU-sized recipes.

detectron2's ``build_resnet_backbone`` asserts ``RES2_OUT_CHANNELS == 64`` for the BasicBlock
depths (18, 34). ``build_basic_resnet_fpn_backbone`` builds the same network from detectron2's
own parts (``BasicStem``, ``BasicBlock``, ``ResNet``, ``FPN``, ``LastLevelP6P7``) with the stage
widths ``RES2_OUT_CHANNELS x (1, 2, 4, 8)`` and stem width ``STEM_OUT_CHANNELS``, so that a
from-scratch model trains several times more iterations per CPU-minute. With the widths 64/64
it is detectron2's R18/R34 RetinaNet backbone.

Config (detectron2's keys): ``MODEL.BACKBONE.NAME: "build_basic_resnet_fpn_backbone"``,
``MODEL.RESNETS.{DEPTH (18 or 34), STEM_OUT_CHANNELS, RES2_OUT_CHANNELS, NORM, OUT_FEATURES}``,
``MODEL.BACKBONE.FREEZE_AT``, ``MODEL.FPN.{IN_FEATURES, OUT_CHANNELS, NORM, FUSE_TYPE}``.
Outputs P3-P7 as RetinaNet's (P6 and P7 from res5).
"""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, ResNet

__all__ = ["build_basic_resnet", "build_basic_resnet_fpn_backbone", "make_basic_stages"]

BLOCKS_PER_STAGE = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def make_basic_stages(depth: int, stem_out_channels: int, res2_out_channels: int, norm="BN"):
    """The four BasicBlock stages of a ResNet-18/34 with widths res2_out_channels x (1, 2, 4, 8).

    The stages argument of detectron2's ``ResNet`` (a list of 4 lists of blocks), for lazy
    configs (``L(make_basic_stages)(depth=18, ...)``); ``ResNet.make_default_stages`` has the
    widths 64/64 fixed.
    """
    if depth not in BLOCKS_PER_STAGE:
        raise ValueError(
            f"depth = {depth!r} is not supported by make_basic_stages; allowed: "
            f"{sorted(BLOCKS_PER_STAGE)} (BasicBlock ResNets; ResNet.make_default_stages builds "
            "50/101/152)"
        )
    for key, value in (("stem_out_channels", stem_out_channels),
                       ("res2_out_channels", res2_out_channels)):
        if int(value) < 1:
            raise ValueError(f"{key} = {value!r} must be a positive channel count")
    stages = []
    in_channels = stem_out_channels
    for i, num_blocks in enumerate(BLOCKS_PER_STAGE[depth]):
        out_channels = res2_out_channels * 2**i
        stages.append(
            ResNet.make_stage(
                BasicBlock, num_blocks, in_channels=in_channels, out_channels=out_channels,
                stride_per_block=[1 if i == 0 else 2] + [1] * (num_blocks - 1), norm=norm,
            )
        )
        in_channels = out_channels
    return stages


def build_basic_resnet(cfg, input_shape: ShapeSpec) -> ResNet:
    """ResNet-18/34 (BasicBlock) with stage widths RES2_OUT_CHANNELS x (1, 2, 4, 8)."""
    node = cfg.MODEL.RESNETS
    if node.DEPTH not in BLOCKS_PER_STAGE:
        raise ValueError(
            f"MODEL.RESNETS.DEPTH={node.DEPTH} is not supported by "
            f"build_basic_resnet_fpn_backbone; allowed: {sorted(BLOCKS_PER_STAGE)} (BasicBlock "
            "ResNets; use detectron2's build_retinanet_resnet_fpn_backbone for 50/101/152)"
        )
    for key in ("STEM_OUT_CHANNELS", "RES2_OUT_CHANNELS"):
        if int(node[key]) < 1:
            raise ValueError(f"MODEL.RESNETS.{key}={node[key]} must be a positive channel count")
    stem = BasicStem(input_shape.channels, node.STEM_OUT_CHANNELS, norm=node.NORM)
    stages = make_basic_stages(
        node.DEPTH, node.STEM_OUT_CHANNELS, node.RES2_OUT_CHANNELS, norm=node.NORM
    )
    return ResNet(
        stem, stages, out_features=node.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT
    )


@BACKBONE_REGISTRY.register()
def build_basic_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """RetinaNet's ResNet FPN (P3-P7) on :func:`build_basic_resnet`."""
    bottom_up = build_basic_resnet(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(bottom_up.output_shape()["res5"].channels, out_channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )

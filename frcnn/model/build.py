"""`build_model`: the one place that maps a `Config` to the detector's constructor arguments.

Every module of the model takes explicit keyword arguments and never reads the config, so a
setting has exactly one source (params.yaml) and one path into the code (this file): e.g.
`loss.lambda` -> `rpn_arguments(cfg)["loss_lambda"]` -> `RegionProposalNetwork.loss_lambda`
-> `losses.rpn_loss(..., lambda_)`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from frcnn.config import Config
from frcnn.model.backbone import build_backbone
from frcnn.model.faster_rcnn import FasterRCNN
from frcnn.model.roi_heads import AvgPoolHead, BoxPredictor, MLPHead, Res5Head, RoIHeads
from frcnn.model.rpn import RegionProposalNetwork, RPNHead
from frcnn.model.transform import ImageTransform
from frcnn.ops.anchors import AnchorGenerator, anchor_scales_px


def rpn_arguments(config: Config) -> dict[str, Any]:
    """The `RegionProposalNetwork` keyword arguments of `config` (its `rpn` and `loss` sections)."""
    r, loss = config.rpn, config.loss
    return dict(pos_iou_thresh=r.pos_iou_thresh, neg_iou_thresh=r.neg_iou_thresh,
                batch_size_per_image=r.batch_size_per_image,
                positive_fraction=r.positive_fraction, border_tolerance=r.border_tolerance,
                nms_thresh=r.nms_thresh, pre_nms_top_n_train=r.pre_nms_top_n_train,
                post_nms_top_n_train=r.post_nms_top_n_train,
                pre_nms_top_n_test=r.pre_nms_top_n_test, post_nms_top_n_test=r.post_nms_top_n_test,
                min_box_size=r.min_box_size, loss_lambda=loss.lambda_,
                smooth_l1_beta=loss.smooth_l1_beta)


def roi_arguments(config: Config) -> dict[str, Any]:
    """The `RoIHeads` keyword arguments of `config` (its `roi` and `loss` sections)."""
    roi, loss = config.roi, config.loss
    return dict(op=roi.op, output_size=roi.output_size, sampling_ratio=roi.sampling_ratio,
                batch_size_per_image=roi.batch_size_per_image,
                positive_fraction=roi.positive_fraction, fg_iou_thresh=roi.fg_iou_thresh,
                bg_iou_thresh_lo=roi.bg_iou_thresh_lo, score_thresh=roi.score_thresh,
                nms_thresh=roi.nms_thresh, detections_per_img=roi.detections_per_img,
                loss_lambda=loss.roi_lambda, smooth_l1_beta=loss.smooth_l1_beta)


def frozen_bn(config: Config) -> bool:
    """`model.frozen_bn`, with null resolved: BatchNorm is frozen exactly when the weights are
    ImageNet's (their statistics are good; those of 2-8 detection images per batch are not)."""
    m = config.model
    return m.pretrained if m.frozen_bn is None else m.frozen_bn


def recipe_warnings(config: Config) -> list[str]:
    """Settings that train, but not what the user most likely wants: one line each."""
    m, roi = config.model, config.roi
    out = []
    if m.pretrained and m.frozen_bn is False:
        out.append("model.frozen_bn: false with ImageNet weights trains BatchNorm on batches of "
                   f"{config.train.batch_size} images, whose statistics are noise next to "
                   "ImageNet's; the references freeze it (null or true)")
    if m.backbone.endswith("_c4") and m.backbone != "resnet18_c4" and roi.output_size < 14:
        out.append(f"roi.output_size: {roi.output_size} with {m.backbone}: res5 (stride 2) shrinks "
                   f"each RoI to {(roi.output_size + 1) // 2}x{(roi.output_size + 1) // 2}; "
                   "detectron2's C4 pools 14x14 into res5 to get 7x7 (roi.output_size: 14)")
    return out


def build_model(config: Config, num_classes: int | None = None) -> FasterRCNN:
    """The detector `config` describes.

    `num_classes` (foreground, background excluded) overrides `model.num_classes`, which the
    pipeline sets from the dataset when it is 0.
    """
    m, a, roi = config.model, config.anchors, config.roi
    k = num_classes or m.num_classes
    if k < 1:
        raise ValueError("model.num_classes: 0 means 'from the dataset', but no dataset class "
                         "count was given to build_model")
    backbone = build_backbone(m.backbone, m.pretrained, frozen_bn(config), m.freeze_stem)
    anchors = AnchorGenerator(anchor_scales_px(a.scales, a.unit, backbone.stride), a.ratios,
                              backbone.stride)
    rpn = RegionProposalNetwork(
        RPNHead(backbone.out_channels, config.rpn.hidden_channels, anchors.num_anchors),
        anchors, **rpn_arguments(config))
    if backbone.res5_head is not None:
        box_head: nn.Module = Res5Head(backbone.res5_head)
        head_dim = backbone.res5_channels
    elif roi.head == "avg":
        box_head, head_dim = AvgPoolHead(backbone.out_channels, roi.hidden_dim), roi.hidden_dim
    else:
        box_head = MLPHead(backbone.out_channels * roi.output_size ** 2, roi.hidden_dim)
        head_dim = roi.hidden_dim
    roi_heads = RoIHeads(box_head, BoxPredictor(head_dim, k, roi.class_agnostic_box),
                         backbone.stride, **roi_arguments(config))
    transform = ImageTransform(m.min_size, m.max_size, size_divisible=backbone.stride,
                               min_size_train=m.min_size_train)
    return FasterRCNN(transform, backbone.body, rpn, roi_heads, k)

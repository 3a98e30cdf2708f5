"""The detector: transform -> backbone -> RPN -> RoI heads -> boxes in the input image's pixels.

Calling convention (torchvision's):
    model.train(); losses = model(images, targets)   # dict of 4 named scalar losses
    model.eval();  detections = model(images)         # [{"boxes", "labels", "scores"}] per image
images: list of Tensor[3, H, W] float in [0, 1], any sizes; targets: list of {"boxes": (G, 4) xyxy
float in the image's pixels, "labels": (G,) int64 in 1..K}. K = `num_classes`, background excluded.
"""

from __future__ import annotations

from torch import Tensor, nn

from frcnn.anchors import AnchorGenerator, anchor_scales_px
from frcnn.config import Config
from frcnn.model.backbone import build_backbone
from frcnn.model.roi_heads import (AvgPoolHead, BoxPredictor, MLPHead, Res5Head, RoIHeads,
                                   ROISettings)
from frcnn.model.rpn import RegionProposalNetwork, RPNHead, RPNSettings
from frcnn.model.transform import ImageTransform, validate_inputs


class FasterRCNN(nn.Module):
    def __init__(self, transform: ImageTransform, backbone: nn.Module, rpn: RegionProposalNetwork,
                 roi_heads: RoIHeads, num_classes: int) -> None:
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.num_classes = num_classes

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
                ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        validate_inputs(images, targets, self.num_classes)
        if self.training and targets is None:
            raise ValueError("targets: required in training mode (call model.eval() to detect)")
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        batch, sizes, targets = self.transform(images, targets)
        features = self.backbone(batch)
        proposals, rpn_losses = self.rpn(features, sizes, targets)
        detections, roi_losses = self.roi_heads(features, proposals, sizes, targets)
        if self.training:
            return {**rpn_losses, **roi_losses}
        return self.transform.postprocess(detections, sizes, original_sizes)


def build_model(config: Config, num_classes: int | None = None) -> FasterRCNN:
    """Map the config to constructor arguments: the one place that reads `Config` for the model.

    `num_classes` (foreground, background excluded) overrides `model.num_classes`, which the
    pipeline sets from the dataset when it is 0.
    """
    m, a, r, roi, loss = config.model, config.anchors, config.rpn, config.roi, config.loss
    k = num_classes or m.num_classes
    if k < 1:
        raise ValueError("model.num_classes: 0 means 'from the dataset', but no dataset class "
                         "count was given to build_model")
    backbone = build_backbone(m.backbone, m.pretrained, m.frozen_bn, m.freeze_stem)
    anchors = AnchorGenerator(anchor_scales_px(a.scales, a.unit, backbone.stride), a.ratios,
                              backbone.stride)
    rpn = RegionProposalNetwork(
        RPNHead(backbone.out_channels, r.hidden_channels, anchors.num_anchors),
        anchors,
        RPNSettings(pos_iou_thresh=r.pos_iou_thresh, neg_iou_thresh=r.neg_iou_thresh,
                    batch_size_per_image=r.batch_size_per_image,
                    positive_fraction=r.positive_fraction, border_tolerance=r.border_tolerance,
                    nms_thresh=r.nms_thresh,
                    pre_nms_top_n=(r.pre_nms_top_n_train, r.pre_nms_top_n_test),
                    post_nms_top_n=(r.post_nms_top_n_train, r.post_nms_top_n_test),
                    min_box_size=r.min_box_size, lambda_=loss.lambda_,
                    smooth_l1_beta=loss.smooth_l1_beta))
    if backbone.res5_head is not None:
        box_head: nn.Module = Res5Head(backbone.res5_head)
        head_dim = backbone.res5_channels
    elif roi.head == "avg":
        box_head, head_dim = AvgPoolHead(backbone.out_channels, roi.hidden_dim), roi.hidden_dim
    else:
        box_head = MLPHead(backbone.out_channels * roi.output_size ** 2, roi.hidden_dim)
        head_dim = roi.hidden_dim
    roi_heads = RoIHeads(
        box_head, BoxPredictor(head_dim, k, roi.class_agnostic_box), backbone.stride,
        ROISettings(op=roi.op, output_size=roi.output_size, sampling_ratio=roi.sampling_ratio,
                    batch_size_per_image=roi.batch_size_per_image,
                    positive_fraction=roi.positive_fraction, fg_iou_thresh=roi.fg_iou_thresh,
                    bg_iou_thresh_lo=roi.bg_iou_thresh_lo, score_thresh=roi.score_thresh,
                    nms_thresh=roi.nms_thresh, detections_per_img=roi.detections_per_img,
                    lambda_=loss.roi_lambda, smooth_l1_beta=loss.smooth_l1_beta))
    transform = ImageTransform(m.min_size, m.max_size, size_divisible=backbone.stride)
    return FasterRCNN(transform, backbone.body, rpn, roi_heads, k)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["FasterRCNN", "build_model", "count_parameters"]

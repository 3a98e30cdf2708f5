"""torchvision's Faster R-CNN built to be our network: only the implementation differs.

How the peer is made equal (`build_pair`): torchvision's `FasterRCNN` gets a deep copy of our
backbone body (the same `nn.Sequential` of ResNet layers, with `out_channels`), an
`AnchorGenerator` with our pixel scales and h/w ratios on the single feature map, the same
proposal counts, NMS, IoU thresholds and sample sizes, `MultiScaleRoIAlign(['0'], S,
sampling_ratio)`, `TwoMLPHead` (= our `MLPHead`) and `FastRCNNPredictor` (= our
`BoxPredictor`), and a `GeneralizedRCNNTransform` with the same min/max size, ImageNet mean/std
and padding multiple. Then every weight and buffer of ours is copied into it, tensor by tensor,
after checking that the shapes agree one to one — so both compute the same function up to the
documented convention differences, and the parameter counts are equal by construction (checked).
Differences the benchmark configuration removes or cannot remove:
- torchvision's `RPNHead` conv is C -> C wide: `rpn.hidden_channels` is set to the backbone's C;
- our `rpn.border_tolerance` (ignore anchors crossing the border) has no torchvision
  equivalent: it is set to -1 (keep all anchors), so both match every anchor;
- torchvision has no RoIPool box head: only `roi.op: align` is benchmarked;
- torchvision has no average-pool head: `roi.head: mlp` at both sizes (the paper setting's
  `avg` head would make ours cheaper still, but would not be a like-for-like comparison);
- left as they are (no effect on the amount of work): anchor centres ((j + 0.5) * stride vs
  j * stride), RoIAlign `aligned=True` vs False, the minimum proposal size (1 px vs 1e-3 px).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from frcnn.config import Config, config_from_dict
from frcnn.model.backbone import backbone_channels
from frcnn.model.build import build_model
from frcnn.model.faster_rcnn import FasterRCNN, count_parameters
from frcnn.model.transform import IMAGENET_MEAN, IMAGENET_STD

# name -> (config overrides, image (H, W), number of GT boxes per image, foreground classes)
SIZES: dict[str, dict[str, Any]] = {
    "resnet18_c4 256": {
        "overrides": {"model.backbone": "resnet18_c4", "model.min_size": 256, "model.max_size": 320},
        "image": (256, 256), "gt_per_image": 4, "num_classes": 6,
    },
    "resnet50 600": {
        # the paper's setting (README, "Real VOC on a GPU") with torchvision's head
        "overrides": {"model.backbone": "resnet50", "model.min_size": 600, "model.max_size": 1000,
                      "model.frozen_bn": True, "model.freeze_stem": True,
                      "anchors.unit": "px", "anchors.scales": [128, 256, 512]},
        "image": (375, 500), "gt_per_image": 3, "num_classes": 20,
    },
}

# what every benchmark config shares, whatever params.yaml says (see the module docstring)
COMMON_OVERRIDES: dict[str, Any] = {
    "model.pretrained": False, "rpn.border_tolerance": -1.0, "roi.op": "align", "roi.head": "mlp",
}


def bench_config(size: str, base: Config | None = None) -> Config:
    """The benchmark config of a size: `base` (params.yaml) with the size's and common overrides."""
    spec = SIZES[size]
    raw = base.to_dict() if base is not None else {}
    over = {**COMMON_OVERRIDES, **spec["overrides"]}
    over["rpn.hidden_channels"] = backbone_channels(over["model.backbone"])
    return config_from_dict(raw, over)


def build_torchvision_peer(cfg: Config, ours: FasterRCNN) -> nn.Module:
    """torchvision's FasterRCNN with our backbone body, anchors, settings and head widths.

    The weights are ours, copied tensor by tensor (shapes checked one to one).
    """
    from torchvision.models.detection import FasterRCNN as TVFasterRCNN
    from torchvision.models.detection.anchor_utils import (
        AnchorGenerator as TVAnchorGenerator,
    )
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    m, r, roi = cfg.model, cfg.rpn, cfg.roi
    if roi.op != "align":
        raise ValueError("roi.op: torchvision has no RoIPool box head; benchmark `align` only")
    if roi.head != "mlp":
        raise ValueError("roi.head: torchvision's box head is TwoMLPHead; benchmark `mlp` only")
    body = copy.deepcopy(ours.backbone)
    channels = backbone_channels(m.backbone)
    body.out_channels = channels
    gen = ours.rpn.anchor_generator
    stride = gen.stride
    anchor_generator = TVAnchorGenerator(sizes=(tuple(gen.scales_px),),
                                         aspect_ratios=(tuple(gen.ratios),))
    k = ours.num_classes
    tv = TVFasterRCNN(
        body, num_classes=None, min_size=m.min_size, max_size=m.max_size,
        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
        rpn_anchor_generator=anchor_generator,
        rpn_pre_nms_top_n_train=r.pre_nms_top_n_train, rpn_pre_nms_top_n_test=r.pre_nms_top_n_test,
        rpn_post_nms_top_n_train=r.post_nms_top_n_train,
        rpn_post_nms_top_n_test=r.post_nms_top_n_test,
        rpn_nms_thresh=r.nms_thresh, rpn_fg_iou_thresh=r.pos_iou_thresh,
        rpn_bg_iou_thresh=r.neg_iou_thresh, rpn_batch_size_per_image=r.batch_size_per_image,
        rpn_positive_fraction=r.positive_fraction, rpn_score_thresh=0.0,
        box_roi_pool=MultiScaleRoIAlign(["0"], roi.output_size, roi.sampling_ratio),
        box_head=TwoMLPHead(channels * roi.output_size ** 2, roi.hidden_dim),
        box_predictor=FastRCNNPredictor(roi.hidden_dim, k + 1),
        box_score_thresh=roi.score_thresh, box_nms_thresh=roi.nms_thresh,
        box_detections_per_img=roi.detections_per_img, box_fg_iou_thresh=roi.fg_iou_thresh,
        box_bg_iou_thresh=roi.fg_iou_thresh, box_batch_size_per_image=roi.batch_size_per_image,
        box_positive_fraction=roi.positive_fraction, bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
        size_divisible=stride)
    copy_weights(ours, tv)
    return tv


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy src's state dict into dst's by position; raise if names' shapes differ anywhere."""
    s, d = src.state_dict(), dst.state_dict()
    if len(s) != len(d):
        raise ValueError(f"state dicts differ in length: {len(s)} vs {len(d)}")
    with torch.no_grad():
        for (ks, vs), (kd, vd) in zip(s.items(), d.items()):
            if vs.shape != vd.shape:
                raise ValueError(f"{ks} {tuple(vs.shape)} vs {kd} {tuple(vd.shape)}")
            vd.copy_(vs)


def calibrate_batchnorm(model: FasterRCNN, images: list[Tensor]) -> None:
    """Set every BatchNorm's running mean/var to the statistics of its input on `images`.

    Without ImageNet weights (no internet here) an untrained ResNet's eval-mode BatchNorm (mean 0,
    var 1) does not normalise, activations grow block by block, the RPN's deltas explode, boxes
    collapse onto the image border and NMS leaves ~20 proposals instead of 300: a workload
    unlike a real detector's. One pass with these hooks gives normalised features, like
    pretrained weights would.
    """
    from torchvision.ops import FrozenBatchNorm2d

    def pre(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        x = args[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))

    handles = [m.register_forward_pre_hook(pre) for m in model.backbone.modules()
               if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            batch, _, _ = model.transform(images)
            model.backbone(batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def build_pair(size: str, base: Config | None = None, seed: int = 0
               ) -> tuple[FasterRCNN, nn.Module, Config]:
    """(ours, torchvision's, config) for a size; raises if the parameter counts differ."""
    cfg = bench_config(size, base)
    torch.manual_seed(seed)
    ours = build_model(cfg, num_classes=SIZES[size]["num_classes"])
    calibrate_batchnorm(ours, make_inputs(size, 2, seed=seed + 100)[0])
    tv = build_torchvision_peer(cfg, ours)
    n_ours, n_tv = count_parameters(ours), count_parameters(tv)
    if n_ours != n_tv:
        raise AssertionError(f"{size}: parameter counts differ: ours {n_ours}, torchvision {n_tv}")
    return ours, tv, cfg


def make_inputs(size: str, batch: int, seed: int = 0, device: str = "cpu"
                ) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """`batch` random images of the size's shape, each with random GT boxes and labels."""
    spec = SIZES[size]
    h, w = spec["image"]
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, h, w, generator=g).to(device))
        n = spec["gt_per_image"]
        wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5]) + torch.tensor([w, h]) * 0.1
        xy = torch.rand(n, 2, generator=g) * (torch.tensor([w, h]) - wh)
        boxes = torch.cat((xy, xy + wh), dim=1)
        labels = torch.randint(1, spec["num_classes"] + 1, (n,), generator=g)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets

"""Second stage (Fast R-CNN): classify each proposal and refine its box per class.

Shapes: N images, P_i proposals of image i, R RoIs in the batch, K foreground classes (K + 1 with
background 0), S = `output_size`, C feature channels, D head width.

Training: GT boxes are appended to the proposals (so every GT has at least one perfect RoI early
on), each RoI is matched to a GT (foreground IoU >= 0.5, background in [lo, 0.5)), `roi.batch_size_per_image`
per image are sampled with at most 25% foreground, and `losses.fast_rcnn_loss` is returned.
Inference: softmax scores, per-class decoded boxes, clipped, score-thresholded, per-class NMS,
the top `detections_per_img` kept.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou, roi_align, roi_pool

from frcnn.ops.boxes import BoxCoder, clip_boxes
from frcnn.ops.losses import fast_rcnn_loss
from frcnn.ops.matching import (
    BELOW_LOW_THRESHOLD,
    BETWEEN_THRESHOLDS,
    match,
    sample_balanced,
)
from frcnn.ops.roi_align import roi_align_grid


class MLPHead(nn.Module):
    """(R, C, S, S) -> flatten -> FC(D) -> ReLU -> FC(D) -> ReLU -> (R, D). torchvision's TwoMLPHead."""

    def __init__(self, in_features: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1)))))


class AvgPoolHead(nn.Module):
    """(R, C, S, S) -> average pool -> FC(D) -> ReLU -> (R, D). The reference design's head."""

    def __init__(self, in_channels: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, hidden_dim)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.fc(x.mean(dim=(2, 3))))


class Res5Head(nn.Module):
    """(R, 1024, S, S) -> ResNet layer4 (stride 2) -> average pool -> (R, 2048). detectron2's C4."""

    def __init__(self, layer4: nn.Module) -> None:
        super().__init__()
        self.layer4 = layer4

    def forward(self, x: Tensor) -> Tensor:
        return self.layer4(x).mean(dim=(2, 3))


class BoxPredictor(nn.Module):
    """(R, D) -> class logits (R, K+1) and per-class deltas (R, 4(K+1)), or with `class_agnostic`
    one set of deltas (R, 4) shared by all classes (detectron2's CLS_AGNOSTIC_BBOX_REG)."""

    def __init__(self, in_features: int, num_classes: int, class_agnostic: bool = False) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, 4 if class_agnostic else 4 * (num_classes + 1))
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class RoIHeads(nn.Module):
    """Pool each RoI (`op`: "align_grid", "align" or "pool"; `output_size`, `sampling_ratio`)
    at 1/`stride`, run `box_head` and `predictor`.

    Training: GT appended to the proposals, RoIs with IoU >= `fg_iou_thresh` foreground, in
    [`bg_iou_thresh_lo`, fg) background, below ignored; `batch_size_per_image` sampled with at most
    `positive_fraction` foreground; loss `losses.fast_rcnn_loss` with `loss_lambda`,
    `smooth_l1_beta`. Inference: scores above `score_thresh`, per-class NMS at `nms_thresh`, the
    top `detections_per_img` per image.
    """

    def __init__(self, box_head: nn.Module, predictor: BoxPredictor, stride: int, *, op: str,
                 output_size: int, sampling_ratio: int, batch_size_per_image: int,
                 positive_fraction: float, fg_iou_thresh: float, bg_iou_thresh_lo: float,
                 score_thresh: float, nms_thresh: float, detections_per_img: int,
                 loss_lambda: float, smooth_l1_beta: float) -> None:
        super().__init__()
        self.box_head = box_head
        self.predictor = predictor
        self.spatial_scale = 1.0 / stride
        self.op, self.output_size, self.sampling_ratio = op, output_size, sampling_ratio
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.fg_iou_thresh, self.bg_iou_thresh_lo = fg_iou_thresh, bg_iou_thresh_lo
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img = detections_per_img
        self.loss_lambda, self.smooth_l1_beta = loss_lambda, smooth_l1_beta
        # second-stage deltas are ~10x smaller than the RPN's; the weights bring them to unit scale
        self.box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))

    def pool(self, features: Tensor, rois: list[Tensor]) -> Tensor:
        """features (N, C, H, W), rois [(R_i, 4)] -> (R, C, S, S)."""
        size = (self.output_size, self.output_size)
        if self.op == "pool":
            # torchvision registers roi_pool for CUDA autocast only: on a CPU under bfloat16
            # autocast it has no kernel, so pool in float32 (a no-op for float32 features)
            pooled = roi_pool(features.float(), [r.float() for r in rois], size, self.spatial_scale)
            return pooled.to(features.dtype)
        if self.op == "align_grid":  # torchvision's numbers, a cheaper CPU backward at small sizes
            return roi_align_grid(features, rois, self.output_size, self.spatial_scale,
                                  self.sampling_ratio)
        # aligned=True: a box's continuous corners are sampled exactly, no half-pixel shift
        return roi_align(features, rois, size, self.spatial_scale, self.sampling_ratio, aligned=True)

    def sample(self, proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor
               ) -> tuple[Tensor, Tensor, Tensor]:
        """proposals (P, 4) -> sampled RoIs (r, 4), their labels (r,) in 0..K, target deltas (r, 4)."""
        proposals = torch.cat((proposals, gt_boxes.to(proposals.dtype)))
        if gt_boxes.shape[0] == 0:
            labels = torch.zeros(proposals.shape[0], dtype=torch.int64, device=proposals.device)
            matched = labels
            gt_boxes = proposals.new_zeros((1, 4))  # encode() needs some box; bg targets are unused
        else:
            matched = match(box_iou(gt_boxes, proposals), self.fg_iou_thresh,
                            self.bg_iou_thresh_lo, allow_low_quality=False)
            labels = gt_labels[matched.clamp(min=0)].clone()
            labels[matched == BETWEEN_THRESHOLDS] = 0    # IoU in [lo, fg): background
            labels[matched == BELOW_LOW_THRESHOLD] = -1  # IoU < lo: ignored (lo = 0.1 in the paper)
        pos, neg = sample_balanced(labels, self.batch_size_per_image, self.positive_fraction)
        keep = torch.cat((pos, neg))
        rois, labels = proposals[keep], labels[keep]
        targets = self.box_coder.encode(gt_boxes[matched[keep].clamp(min=0)], rois)
        return rois, labels, targets

    def forward(self, features: Tensor, proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None
                ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("targets: required in training mode")
            sampled = [self.sample(p, t["boxes"], t["labels"]) for p, t in zip(proposals, targets)]
            rois = [s[0] for s in sampled]
            x = self.box_head(self.pool(features, rois))
            class_logits, box_deltas = self.predictor(x)
            cls, reg = fast_rcnn_loss(class_logits, box_deltas, torch.cat([s[1] for s in sampled]),
                                      torch.cat([s[2] for s in sampled]), self.loss_lambda,
                                      self.smooth_l1_beta)
            return [], {"loss_classifier": cls, "loss_box_reg": reg}
        x = self.box_head(self.pool(features, proposals))
        class_logits, box_deltas = self.predictor(x)
        # scores and boxes in float32 under any autocast (eval.amp), as in the RPN
        return self.postprocess(class_logits.float(), box_deltas.float(), proposals, image_sizes), {}

    def postprocess(self, class_logits: Tensor, box_deltas: Tensor, proposals: list[Tensor],
                    image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """(R, K+1) logits, (R, 4(K+1)) or class-agnostic (R, 4) deltas -> per image
        {boxes (D, 4), labels (D,), scores (D,)}.

        The whole batch at once (one decode, one threshold, one NMS with (image, class) groups):
        a loop over images would run every small op N times.
        """
        num_classes = class_logits.shape[1]  # K + 1
        n, device = len(proposals), class_logits.device
        counts = torch.tensor([p.shape[0] for p in proposals], device=device)
        image = torch.repeat_interleave(torch.arange(n, device=device), counts)      # (R,)
        props = torch.cat(proposals)
        sizes = torch.tensor(image_sizes, dtype=props.dtype, device=device)[image]   # (R, 2)
        # (R, K+1, 4); a class-agnostic regressor's one box serves every class
        boxes = self.box_coder.decode(box_deltas, props)
        boxes = boxes.view(props.shape[0], box_deltas.shape[1] // 4, 4).expand(-1, num_classes, 4)
        boxes = clip_boxes(boxes, sizes[:, 0:1], sizes[:, 1:2])
        scores = torch.softmax(class_logits, dim=1)
        labels = torch.arange(num_classes, device=device).expand_as(scores)
        image = image[:, None].expand_as(scores)
        # drop the background column, then treat every (RoI, class) pair as a candidate
        boxes = boxes[:, 1:].reshape(-1, 4)
        scores, labels, image = (t[:, 1:].reshape(-1) for t in (scores, labels, image))
        wh = boxes[:, 2:] - boxes[:, :2]
        keep = torch.where((scores > self.score_thresh) & (wh >= 1e-2).all(dim=1))[0]
        boxes, scores, labels, image = boxes[keep], scores[keep], labels[keep], image[keep]
        # groups (image, class): boxes of different images or classes never suppress each other
        keep = batched_nms(boxes, scores, image * num_classes + labels, self.nms_thresh)
        boxes, scores, labels, image = boxes[keep], scores[keep], labels[keep], image[keep]
        results = []
        for i in range(n):  # sorted by score: the first detections_per_img of each image
            sel = torch.where(image == i)[0][: self.detections_per_img]
            results.append({"boxes": boxes[sel], "labels": labels[sel], "scores": scores[sel]})
        return results

"""Region Proposal Network: objectness and box deltas for every anchor, then proposals.

Shapes: N images, C feature channels, (H, W) feature map, A anchors per cell, M = H * W * A
anchors per image, S sampled anchors in a batch, P proposals per image.

Training: anchors are matched to GT boxes (positive IoU >= 0.7 or a GT's best anchor, negative
< 0.3, anchors crossing the image border ignored as in the paper), `rpn.batch_size_per_image`
per image are sampled (at most half positive), and the losses of `losses.rpn_loss` are returned.
Both modes: deltas are applied to the anchors, boxes clipped, tiny ones dropped, the top
`pre_nms_top_n` per image kept, NMS at `nms_thresh`, the top `post_nms_top_n` returned.
Proposals are detached: NMS and top-k are not differentiable, and the paper's approximate joint
training treats proposals as constants for the second stage.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou

from frcnn.ops.anchors import AnchorGenerator
from frcnn.ops.boxes import BoxCoder, clip_boxes, remove_small_boxes
from frcnn.ops.losses import rpn_loss
from frcnn.ops.matching import BELOW_LOW_THRESHOLD, match, sample_balanced
from frcnn.ops.nms import nms_top_n, per_group_nms


class RPNHead(nn.Module):
    """3x3 conv -> ReLU -> two 1x1 convs: objectness (N, A, H, W) and deltas (N, 4A, H, W)."""

    def __init__(self, in_channels: int, hidden_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden_channels, 3, padding=1)
        self.objectness = nn.Conv2d(hidden_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(hidden_channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.relu(self.conv(features))
        return self.objectness(x), self.deltas(x)


class RegionProposalNetwork(nn.Module):
    """Objectness and deltas for every anchor (`head`), proposals, and in training the RPN loss.

    Anchor labels: IoU >= `pos_iou_thresh` (or a GT's best anchor) positive, < `neg_iou_thresh`
    negative; anchors crossing the image border by more than `border_tolerance` px are ignored
    (< 0: none are). `batch_size_per_image` anchors are sampled, at most `positive_fraction`
    positive. Proposals: the top `pre_nms_top_n_*` by objectness are decoded, clipped, those
    under `min_box_size` px dropped, NMS at `nms_thresh`, the top `post_nms_top_n_*` kept
    (`_train` in training mode, `_test` in eval mode). Loss: `losses.rpn_loss` with
    `loss_lambda` and `smooth_l1_beta`.
    """

    def __init__(self, head: RPNHead, anchor_generator: AnchorGenerator, *,
                 pos_iou_thresh: float, neg_iou_thresh: float, batch_size_per_image: int,
                 positive_fraction: float, border_tolerance: float, nms_thresh: float,
                 pre_nms_top_n_train: int, post_nms_top_n_train: int, pre_nms_top_n_test: int,
                 post_nms_top_n_test: int, min_box_size: float, loss_lambda: float,
                 smooth_l1_beta: float) -> None:
        super().__init__()
        self.head = head
        self.anchor_generator = anchor_generator
        self.pos_iou_thresh, self.neg_iou_thresh = pos_iou_thresh, neg_iou_thresh
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.border_tolerance = border_tolerance
        self.nms_thresh, self.min_box_size = nms_thresh, min_box_size
        self.pre_nms_top_n = {"train": pre_nms_top_n_train, "test": pre_nms_top_n_test}
        self.post_nms_top_n = {"train": post_nms_top_n_train, "test": post_nms_top_n_test}
        self.loss_lambda, self.smooth_l1_beta = loss_lambda, smooth_l1_beta
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))

    def forward(self, features: Tensor, image_sizes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None
                ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """features (N, C, H, W) -> proposals [(P_i, 4)] in resized-image pixels, losses."""
        n, _, h, w = features.shape
        objectness, deltas = self.head(features)
        # (N, A, H, W) -> (N, H, W, A) -> (N, M): the anchors' (H, W, A) order
        objectness = objectness.permute(0, 2, 3, 1).reshape(n, -1)
        deltas = deltas.view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
        anchors = self.anchor_generator((h, w), features.device)  # (M, 4)
        if not self.training:
            # decode in float32 under any autocast (eval.amp): bfloat16 box corners are ~2 px
            # coarse at 500 px. Training keeps its autocast dtype, as the recorded runs did.
            objectness, deltas = objectness.float(), deltas.float()

        proposals = self.propose(objectness.detach(), deltas.detach(), anchors, image_sizes)
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("targets: required in training mode")
            losses = self.loss(objectness, deltas, anchors, image_sizes, targets)
        return proposals, losses

    def propose(self, objectness: Tensor, deltas: Tensor, anchors: Tensor,
                image_sizes: list[tuple[int, int]]) -> list[Tensor]:
        """objectness (N, M), deltas (N, M, 4), anchors (M, 4) -> [(P_i, 4)], all images at once."""
        n, m = objectness.shape
        phase = "train" if self.training else "test"
        pre_n = min(self.pre_nms_top_n[phase], m)
        post_n = self.post_nms_top_n[phase]
        # top-k before decoding: decoding and NMS on all M anchors would waste most of the time
        scores, idx = objectness.topk(pre_n, dim=1)                          # (N, k)
        boxes = self.box_coder.decode(deltas.gather(1, idx[..., None].expand(-1, -1, 4)).reshape(-1, 4),
                                      anchors[idx.reshape(-1)]).view(n, pre_n, 4)
        sizes = torch.tensor(image_sizes, dtype=boxes.dtype, device=boxes.device)  # (N, 2)
        boxes = clip_boxes(boxes, sizes[:, 0:1], sizes[:, 1:2])
        image_idx = torch.arange(n, device=boxes.device)[:, None].expand(n, pre_n)
        boxes, scores, image_idx = boxes.reshape(-1, 4), scores.reshape(-1), image_idx.reshape(-1)
        keep = remove_small_boxes(boxes, self.min_box_size)
        boxes, scores, image_idx = boxes[keep], scores[keep], image_idx[keep]
        if not self.training and per_group_nms(boxes):
            # batched_nms would run one NMS per image here: stop each at the post_n it keeps (the
            # same proposals, a third of a CPU inference less; frcnn.ops.nms). Training keeps
            # batched_nms, whose order of equal-score proposals the recorded runs depend on.
            return [boxes[sel][nms_top_n(boxes[sel], scores[sel], self.nms_thresh, post_n)]
                    for sel in (torch.where(image_idx == i)[0] for i in range(n))]
        # one NMS call for the whole batch: boxes of different images never suppress each other
        keep = batched_nms(boxes, scores, image_idx, self.nms_thresh)  # sorted by score
        boxes, image_idx = boxes[keep], image_idx[keep]
        return [boxes[image_idx == i][:post_n] for i in range(n)]

    def assign_targets(self, anchors: Tensor, image_size: tuple[int, int], gt_boxes: Tensor
                       ) -> tuple[Tensor, Tensor]:
        """anchors (M, 4), gt (G, 4) -> labels (M,) in {1, 0, -1 ignored}, matched GT index (M,)."""
        iou = box_iou(gt_boxes, anchors)  # (G, M)
        if self.border_tolerance >= 0:
            t = self.border_tolerance
            h, w = image_size
            inside = ((anchors[:, 0] >= -t) & (anchors[:, 1] >= -t)
                      & (anchors[:, 2] <= w + t) & (anchors[:, 3] <= h + t))
            # IoU -1 keeps outside anchors from being any GT's best anchor; they are ignored below
            iou[:, ~inside] = -1.0
        else:
            inside = torch.ones(anchors.shape[0], dtype=torch.bool, device=anchors.device)
        matched = match(iou, self.pos_iou_thresh, self.neg_iou_thresh, allow_low_quality=True)
        labels = torch.full_like(matched, -1)
        labels[matched >= 0] = 1
        labels[matched == BELOW_LOW_THRESHOLD] = 0
        labels[~inside] = -1
        return labels, matched

    def loss(self, objectness: Tensor, deltas: Tensor, anchors: Tensor,
             image_sizes: list[tuple[int, int]], targets: list[dict[str, Tensor]]
             ) -> dict[str, Tensor]:
        obj, pred, lab, tgt = [], [], [], []
        for i, target in enumerate(targets):
            gt = target["boxes"]
            labels, matched = self.assign_targets(anchors, image_sizes[i], gt)
            pos, neg = sample_balanced(labels, self.batch_size_per_image, self.positive_fraction)
            sampled = torch.cat((pos, neg))
            obj.append(objectness[i, sampled])
            pred.append(deltas[i, sampled])
            lab.append(labels[sampled])
            # targets only matter for positives; negatives get zeros that the loss masks out
            # float32 even under autocast: fp16 targets would lose the small deltas
            t = torch.zeros((sampled.numel(), 4), dtype=torch.float32, device=deltas.device)
            if pos.numel():
                t[: pos.numel()] = self.box_coder.encode(gt[matched[pos]], anchors[pos])
            tgt.append(t)
        cls, reg = rpn_loss(torch.cat(obj), torch.cat(pred), torch.cat(lab), torch.cat(tgt),
                            self.loss_lambda, self.smooth_l1_beta)
        return {"loss_rpn_objectness": cls, "loss_rpn_box": reg}

"""Assigning anchors/proposals to ground-truth boxes, and balanced sampling of the assigned ones.

Shapes: G ground-truth boxes, N anchors (or proposals). `iou` is the (G, N) matrix from
`box_iou(gt_boxes, anchors)`.

`match` returns, for each of the N candidates, the index of its GT box (>= 0), or a sentinel:
`BELOW_LOW_THRESHOLD` (-1, negative/background) or `BETWEEN_THRESHOLDS` (-2, ignored in the loss).
The same function serves both stages: the RPN (0.3 / 0.7, keeping each GT's best anchors) and the
second stage (fg >= 0.5, background in [lo, 0.5), no best-anchor rule).
"""

from __future__ import annotations

import torch
from torch import Tensor

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def match(iou: Tensor, high: float, low: float, allow_low_quality: bool) -> Tensor:
    """Assign each of N candidates to a GT box. iou (G, N) -> matched (N,) int64.

    - max IoU >= high → the index of that GT (positive). The paper says "> 0.7"; we use >= like
      torchvision, which only differs on exact ties with the threshold.
    - max IoU < low → BELOW_LOW_THRESHOLD (negative).
    - otherwise → BETWEEN_THRESHOLDS (ignored).
    - allow_low_quality: every candidate whose IoU equals a GT's best IoU (ties included) is
      positive for that GT, so no GT is left without an anchor (the paper's second rule). A GT
      whose best IoU is 0 gives no match: no anchor overlaps it at all.
    With G = 0 every candidate is negative.
    """
    num = iou.shape[1]
    if iou.shape[0] == 0:
        return torch.full((num,), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=iou.device)
    best_iou, matched = iou.max(dim=0)
    original = matched.clone()
    matched[best_iou < high] = BETWEEN_THRESHOLDS
    matched[best_iou < low] = BELOW_LOW_THRESHOLD
    if allow_low_quality:
        best_per_gt = iou.max(dim=1, keepdim=True).values  # (G, 1)
        is_best = (iou == best_per_gt) & (best_per_gt > 0)
        candidates = torch.where(is_best.any(dim=0))[0]
        matched[candidates] = original[candidates]
    return matched


def sample_balanced(labels: Tensor, batch_size: int, positive_fraction: float,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Pick at most `batch_size` candidates, at most `positive_fraction` of them positive.

    labels (N,): 1 positive, 0 negative, -1 ignored -> (pos_idx, neg_idx), int64 index tensors.
    Negatives fill whatever positives leave, so an image with no objects trains on `batch_size`
    negatives. Random with `generator` (or the global RNG, which training seeds).
    """
    positive = torch.where(labels >= 1)[0]
    negative = torch.where(labels == 0)[0]
    num_pos = min(positive.numel(), int(batch_size * positive_fraction))
    num_neg = min(negative.numel(), batch_size - num_pos)
    perm_pos = torch.randperm(positive.numel(), generator=generator, device="cpu")[:num_pos]
    perm_neg = torch.randperm(negative.numel(), generator=generator, device="cpu")[:num_neg]
    return positive[perm_pos.to(labels.device)], negative[perm_neg.to(labels.device)]

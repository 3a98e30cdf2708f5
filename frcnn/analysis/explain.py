"""The counts of one image's journey through the detector, read off a `Trace`.

`summarize(trace)` is what the explain figures put in their titles and what `index.md` lists;
every number comes from the captured pass (the recall of GT by the proposals and the
"rescued" positives are the only things derived here, from boxes the pass produced).
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.ops import box_iou

from frcnn.analysis.trace import Trace


def proposal_recall(proposals: torch.Tensor, gt: torch.Tensor, iou: float) -> float:
    """Share of GT boxes (G, 4) covered by some proposal (P, 4) at IoU >= `iou` (nan if no GT)."""
    if gt.shape[0] == 0:
        return float("nan")
    if proposals.shape[0] == 0:
        return 0.0
    return float((box_iou(gt, proposals).max(dim=1).values >= iou).float().mean())


def rescued_positives(tr: Trace) -> torch.Tensor:
    """Indices of positive anchors below `rpn.pos_iou_thresh` with their GT: the positives only
    the "best anchor of each GT" rule made (the paper's second positive condition)."""
    view = tr.training
    if view is None:
        return torch.zeros(0, dtype=torch.int64)
    pos = torch.where(view.anchor_labels == 1)[0]
    if pos.numel() == 0:
        return pos
    a, g = tr.anchors[pos], view.gt_boxes[view.anchor_matched[pos]]
    lt, rb = torch.maximum(a[:, :2], g[:, :2]), torch.minimum(a[:, 2:], g[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    union = (a[:, 2:] - a[:, :2]).prod(dim=1) + (g[:, 2:] - g[:, :2]).prod(dim=1) - inter
    iou = inter / union  # each positive with its own matched GT, not all pairs
    return pos[iou < tr.settings["pos_iou_thresh"]]


def summarize(tr: Trace) -> dict[str, Any]:
    """Every count the figures show, as plain numbers (JSON-ready)."""
    h, w = tr.settings["feature_hw"]
    out: dict[str, Any] = {
        "image_size": list(tr.image_size), "stride": tr.stride, "feature_hw": [h, w],
        "anchors_per_cell": tr.num_anchor_shapes, "anchors": int(tr.anchors.shape[0]),
        "pre_nms": int(tr.pre_nms_boxes.shape[0]), "after_nms": int(tr.nms_keep.numel()),
        "proposals": int(tr.proposals.shape[0]),
        "detections": int(tr.detections["boxes"].shape[0]),
    }
    view = tr.training
    if view is not None:
        out.update({
            "gt": int(view.gt_boxes.shape[0]),
            "anchor_positive": int((view.anchor_labels == 1).sum()),
            "anchor_negative": int((view.anchor_labels == 0).sum()),
            "anchor_ignored": int((view.anchor_labels == -1).sum()),
            "anchor_rescued": int(rescued_positives(tr).numel()),
            "rpn_sampled_positive": int(view.rpn_positive.numel()),
            "rpn_sampled_negative": int(view.rpn_negative.numel()),
            "roi_foreground": int((view.roi_labels > 0).sum()),
            "roi_background": int((view.roi_labels == 0).sum()),
            "proposal_recall@0.5": proposal_recall(tr.proposals, view.gt_boxes, 0.5),
            "proposal_recall@0.7": proposal_recall(tr.proposals, view.gt_boxes, 0.7),
        })
    return out


__all__ = ["proposal_recall", "rescued_positives", "summarize"]

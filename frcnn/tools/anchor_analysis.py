"""How well do the configured anchors cover the ground truth? Measured before training, not after.

For each GT box (in the resized image the model sees) we place the real anchor grid, drop anchors
the RPN would ignore at the border, and take the best IoU. The fraction of GT boxes whose best
anchor reaches `rpn.pos_iou_thresh` is the fraction the RPN can learn through the threshold rule;
the rest rely on the "best anchor" rule alone, with a weak, low-IoU target.

Suggestions come from k-means on GT (w, h) with distance 1 - IoU of boxes sharing a centre
(YOLOv2's dimension clusters), factorised into the `scales` x `ratios` form this project uses.
Shapes: G GT boxes, A anchors, k clusters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

from frcnn.ops.anchors import base_anchors, grid_anchors

# COCO's size buckets, by area in the resized image
SIZE_BUCKETS = (("small", 0.0, 32.0 ** 2), ("medium", 32.0 ** 2, 96.0 ** 2),
                ("large", 96.0 ** 2, float("inf")))


def best_anchor_iou(gt_boxes: torch.Tensor, image_size: tuple[int, int], scales_px: tuple[float, ...],
                    ratios: tuple[float, ...], stride: int, border_tolerance: float = 0.0
                    ) -> torch.Tensor:
    """gt_boxes (G, 4) in an image of (h, w) -> best IoU over the usable anchors (G,)."""
    h, w = image_size
    feature = (math.ceil(h / stride), math.ceil(w / stride))
    anchors = grid_anchors(base_anchors(scales_px, ratios), feature, stride)
    if border_tolerance >= 0:
        t = border_tolerance
        inside = ((anchors[:, 0] >= -t) & (anchors[:, 1] >= -t)
                  & (anchors[:, 2] <= w + t) & (anchors[:, 3] <= h + t))
        anchors = anchors[inside]
    if gt_boxes.numel() == 0 or anchors.numel() == 0:
        return torch.zeros(gt_boxes.shape[0])
    return box_iou(gt_boxes.float(), anchors).max(dim=1).values


def shape_iou(wh: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """IoU of boxes sharing a centre: wh (G, 2), centres (k, 2) -> (G, k)."""
    inter = np.minimum(wh[:, None, 0], centres[None, :, 0]) * np.minimum(wh[:, None, 1], centres[None, :, 1])
    union = (wh[:, 0] * wh[:, 1])[:, None] + (centres[:, 0] * centres[:, 1])[None, :] - inter
    return inter / union


def kmeans_iou(wh: np.ndarray, k: int, seed: int = 0, iters: int = 100) -> np.ndarray:
    """k-means on (G, 2) box sizes with distance 1 - IoU -> (k, 2) centres sorted by area."""
    k = min(k, len(wh))
    rng = np.random.default_rng(seed)
    centres = wh[rng.choice(len(wh), size=k, replace=False)].astype(float)
    for _ in range(iters):
        assign = shape_iou(wh, centres).argmax(axis=1)
        # the median is robust to the few huge/tiny boxes that would drag a mean
        new = np.array([np.median(wh[assign == j], axis=0) if np.any(assign == j) else centres[j]
                        for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return centres[np.argsort(centres[:, 0] * centres[:, 1])]


def kmeans_1d(values: np.ndarray, k: int, iters: int = 50) -> np.ndarray:
    """Lloyd's k-means on scalars, initialised at evenly spaced quantiles -> (k,) sorted centres."""
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        assign = np.abs(values[:, None] - centres[None, :]).argmin(axis=1)
        new = np.array([values[assign == j].mean() if np.any(assign == j) else centres[j]
                        for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return np.sort(centres)


def factorise_boxes(wh: np.ndarray, num_scales: int, num_ratios: int) -> tuple[list[float], list[float]]:
    """GT sizes (G, 2) -> scales and ratios from 1-D k-means on log sqrt(w h) and log(h / w)."""
    scales = np.exp(kmeans_1d(np.log(np.sqrt(wh[:, 0] * wh[:, 1])), num_scales))
    ratios = np.exp(kmeans_1d(np.log(wh[:, 1] / wh[:, 0]), num_ratios))
    return [float(round(v, 1)) for v in scales], [float(round(v, 2)) for v in ratios]


def factorise(centres: np.ndarray, num_scales: int, num_ratios: int) -> tuple[list[float], list[float]]:
    """(k, 2) cluster sizes -> `num_scales` scales (sqrt(w h)) and `num_ratios` ratios (h / w).

    Quantiles of log-scale and log-ratio: the product grid then spans the clusters' range.
    """
    log_s = np.log(np.sqrt(centres[:, 0] * centres[:, 1]))
    log_r = np.log(centres[:, 1] / centres[:, 0])
    qs = np.linspace(0, 1, num_scales + 2)[1:-1] if num_scales > 1 else [0.5]
    qr = np.linspace(0, 1, num_ratios + 2)[1:-1] if num_ratios > 1 else [0.5]
    scales = sorted(float(round(math.exp(v), 1)) for v in np.quantile(log_s, qs))
    ratios = sorted(float(round(math.exp(v), 2)) for v in np.quantile(log_r, qr))
    return scales, ratios


@dataclass
class Coverage:
    num_gt: int
    mean_best_iou: float
    fraction_above_pos: float
    per_bucket: dict[str, dict[str, float]]
    histogram: tuple[list[float], list[int]]   # bin edges, counts of best IoU

    def to_dict(self) -> dict:
        return {"num_gt": self.num_gt, "mean_best_iou": self.mean_best_iou,
                "fraction_above_pos_thresh": self.fraction_above_pos, "per_size": self.per_bucket,
                "best_iou_histogram": {"edges": self.histogram[0], "counts": self.histogram[1]}}


def coverage(best_iou: np.ndarray, areas: np.ndarray, pos_thresh: float) -> Coverage:
    """best_iou (G,), areas (G,) in resized pixels -> coverage statistics."""
    counts, edges = np.histogram(best_iou, bins=20, range=(0.0, 1.0))
    buckets = {}
    for name, lo, hi in SIZE_BUCKETS:
        sel = (areas >= lo) & (areas < hi)
        buckets[name] = {"num_gt": int(sel.sum()),
                         "mean_best_iou": float(best_iou[sel].mean()) if sel.any() else float("nan"),
                         "fraction_above_pos_thresh":
                             float((best_iou[sel] >= pos_thresh).mean()) if sel.any() else float("nan")}
    return Coverage(num_gt=len(best_iou),
                    mean_best_iou=float(best_iou.mean()) if len(best_iou) else float("nan"),
                    fraction_above_pos=float((best_iou >= pos_thresh).mean()) if len(best_iou) else float("nan"),
                    per_bucket=buckets, histogram=(edges.round(3).tolist(), counts.tolist()))


def resized_gt(gt: dict, min_size: int, max_size: int) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    """A COCO GT dict -> per image with non-crowd boxes: (boxes (G, 4) xyxy, (h, w)), both in
    the resized image the model sees (short side min_size, long side <= max_size)."""
    by_image: dict[int, list[list[float]]] = {}
    for ann in gt["annotations"]:
        if not ann.get("iscrowd", 0):
            by_image.setdefault(ann["image_id"], []).append(ann["bbox"])
    out = []
    for img in gt["images"]:
        if img["id"] not in by_image:
            continue
        h, w = img["height"], img["width"]
        scale = min(min_size / min(h, w), max_size / max(h, w))
        xywh = torch.tensor(by_image[img["id"]], dtype=torch.float32) * scale
        xyxy = torch.cat((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), dim=1)
        out.append((xyxy, (int(round(h * scale)), int(round(w * scale)))))
    return out


def analyze_coco(gt: dict, scales_px: tuple[float, ...], ratios: tuple[float, ...], stride: int,
                 min_size: int, max_size: int, pos_thresh: float, border_tolerance: float,
                 seed: int = 0) -> dict:
    """Coverage of a COCO GT dict's non-crowd boxes by the configured anchors, and suggested
    scales/ratios (the same counts) with the coverage they would reach."""
    images = resized_gt(gt, min_size, max_size)
    if not images:
        raise ValueError("no (non-difficult) ground-truth boxes to analyse")

    def best_for(scales, rats) -> np.ndarray:
        return torch.cat([best_anchor_iou(b, size, tuple(scales), tuple(rats), stride,
                                          border_tolerance) for b, size in images]).numpy()

    boxes = torch.cat([b for b, _ in images])
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1.0).numpy()
    best = best_for(scales_px, ratios)
    cov = coverage(best, wh[:, 0] * wh[:, 1], pos_thresh)
    centres = kmeans_iou(wh, len(scales_px) * len(ratios), seed=seed)
    # two ways to put the clusters on a scales x ratios grid; keep whichever covers more GT
    candidates = [factorise(centres, len(scales_px), len(ratios)),
                  factorise_boxes(wh, len(scales_px), len(ratios))]
    scored = [(best_for(s, r), s, r) for s, r in candidates]
    sug_best, sug_scales, sug_ratios = max(
        scored, key=lambda c: ((c[0] >= pos_thresh).mean(), c[0].mean()))
    return {"pos_iou_thresh": pos_thresh,
            "configured": {"scales_px": list(scales_px), "ratios": list(ratios), **cov.to_dict()},
            "suggested": {"scales_px": sug_scales, "ratios": sug_ratios,
                          "mean_best_iou": float(sug_best.mean()),
                          "fraction_above_pos_thresh": float((sug_best >= pos_thresh).mean()),
                          "clusters_wh": centres.round(1).tolist()},
            "best_iou": {"configured": best, "suggested": sug_best}}

"""VOC AP@0.5 by the devkit's rules (`voc_metrics`), and how it differs from COCO's (`coco.coco_metrics`).

Both functions take the same inputs: the COCO ground-truth dict (as `preprocess` writes it:
`images`, `annotations` with `bbox` [x, y, w, h] 0-based, `iscrowd`, `difficult`, and `categories`
with ids 1..K in class order) and COCO results `[{image_id, category_id, bbox [x, y, w, h], score}]`.

`coco_metrics` (pycocotools COCOeval, bbox): mAP@[.5:.95], AP50, AP75, AP small/medium/large, AR@100
and per-class AP50 / AP. `voc_metrics` (implemented here): VOC07 11-point AP and VOC2010+ all-point
AP at IoU 0.5, per class and mean, plus the PR curves.

How "difficult" objects are handled, and why the two AP50 numbers differ
-----------------------------------------------------------------------
VOC marks hard objects "difficult": they are not counted as positives, and a detection on one is
neither a true nor a false positive. pycocotools has no such flag: `COCOeval._prepare` overwrites
each GT's `ignore` with its `iscrowd`, so difficult objects are written with `iscrowd=1`. A crowd GT
is only an approximation of the devkit's rule:

- devkit: a detection takes the GT of highest IoU (difficult included) and is ignored if that IoU
  is > 0.5 and the GT is difficult. pycocotools: a detection that finds no unmatched regular GT
  is ignored if it "matches" a crowd GT, where the overlap with a crowd GT is intersection over the
  *detection's* area (not IoU), so a small box inside a difficult object is ignored by pycocotools
  but a false positive for the devkit.
- A crowd GT can absorb any number of detections; a difficult GT in the devkit also absorbs every
  detection whose best match it is, but only through IoU.
- devkit: a detection whose best GT is already matched is a false positive (duplicate).
  pycocotools skips matched GTs and takes the best *unmatched* one above the threshold, so a second
  detection between two overlapping same-class objects can still be a true positive.
- Threshold: pycocotools matches at IoU >= t, the devkit at IoU > t (`ovmax > MINOVERLAP`).
- Interpolation: COCO averages the precision envelope at 101 recall points (0, 0.01, ..., 1);
  VOC07 at 11 points (0, 0.1, ..., 1); VOC2010+ integrates the envelope (all points). For the same
  matches, |COCO AP50 - VOC2010 AP| <= 0.01 per class (the envelope is monotone, so a 101-point
  average is within one step, 1/100, of its integral); VOC07 (11 points, step 0.1) can differ by
  up to 0.1 the same way, by design.
- pycocotools keeps at most 100 detections per image and class (maxDets); the devkit keeps all.

IoU convention (why we add no +1)
---------------------------------
The devkit computes IoU on 1-based integer pixel indices and adds 1 to every width and height
(`iw = min(xmax) - max(xmin) + 1`). Our boxes are continuous and 0-based: a VOC box
(xmin, ymin, xmax, ymax) becomes (xmin - 1, ymin - 1, xmax, ymax), whose width xmax - xmin + 1 is
the devkit's, and the intersection min(xmax) - max(xmin - 1) is too, so for integer VOC boxes our
plain IoU equals the devkit's exactly (tested). Detections are continuous either way.

Means: the mean AP is over classes with at least one non-difficult GT box (a class without any has
no defined AP: NaN per class, left out of the mean, as pycocotools does with its -1). A class with
GT but no detections has AP 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["voc_metrics", "voc_ap_all_point", "voc_ap_11_point", "iou_xyxy"]

# VOC07 recall thresholds exactly as py-faster-rcnn / detectron2's voc_eval: np.arange(0, 1.1, 0.1),
# whose 0.3, 0.6, 0.7 are a hair above the decimal (0.30000000000000004): a recall of exactly 3/10
# does not reach the "0.3" point there, and so not here either, to give the same numbers.
VOC07_RECALL_POINTS = np.arange(0.0, 1.1, 0.1)


# ------------------------------------------------------------------ pycocotools


def check_image_ids(gt: dict[str, Any], detections: Sequence[dict[str, Any]]) -> None:
    known = {img["id"] for img in gt["images"]}
    unknown = {d["image_id"] for d in detections} - known
    if unknown:
        raise ValueError(f"detections name {len(unknown)} image ids not in the ground truth, "
                         f"e.g. {sorted(unknown)[:5]}")
    cats = {c["id"] for c in gt["categories"]}
    bad = {d["category_id"] for d in detections} - cats
    if bad:
        raise ValueError(f"detections name category ids not in the ground truth: {sorted(bad)}")


# ------------------------------------------------------------------ VOC devkit rules


def iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise IoU of paired boxes a (N, 4), b (N, 4) xyxy, continuous (no +1) -> (N,)."""
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    union = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
             - inter)
    return inter / np.maximum(union, np.finfo(np.float64).eps)


def voc_ap_all_point(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2010+ AP: area under the monotone precision envelope; recall/precision (D,) in rank order."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # envelope: best precision at recall >= r
    step = np.flatnonzero(mrec[1:] != mrec[:-1])  # where recall grows
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def voc_ap_11_point(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC07 AP: mean over t in {0, 0.1, ..., 1} of the max precision at recall >= t (0 if none)."""
    if recall.size == 0:
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    first = np.searchsorted(recall, VOC07_RECALL_POINTS, side="left")  # recall is non-decreasing
    reached = first < recall.size
    return float(np.sum(envelope[first[reached]]) / VOC07_RECALL_POINTS.size)


def voc_metrics(gt: dict[str, Any], detections: Sequence[dict[str, Any]],
                iou_thresh: float = 0.5) -> dict[str, Any]:
    """VOC AP at `iou_thresh` by the devkit's rules, for all classes at once.

    Per class, detections in descending score order (ties: input order); each takes the GT box of
    highest IoU in its image and class, difficult ones included. IoU > iou_thresh with a difficult
    GT: ignored (left out of the curve; the devkit keeps it as a repeated point, same AP). With a
    not yet matched GT: true positive. Otherwise (already matched, or IoU too low): false positive.
    Positives are the non-difficult GT boxes (`difficult`, or `iscrowd` when that field is absent).

    Returns {voc07_map, voc10_map: float (mean over classes with >= 1 non-difficult GT),
    per_class_voc07, per_class_voc10: {name: AP, NaN without GT}, num_gt (non-difficult),
    num_difficult, num_detections, tp: {name: int}, pr_curves: {name: {"recall": (D,),
    "precision": (D,)}} in rank order without the ignored detections, iou_thresh}.
    """
    check_image_ids(gt, detections)
    categories = sorted(gt["categories"], key=lambda c: c["id"])
    names = [c["name"] for c in categories]
    cat_index = {c["id"]: k for k, c in enumerate(categories)}
    img_index = {img["id"]: i for i, img in enumerate(gt["images"])}
    num_images = max(len(img_index), 1)

    g_key, g_boxes, g_diff = _gt_arrays(gt["annotations"], cat_index, img_index, num_images)
    d_cls, d_key, d_boxes, d_score = _det_arrays(detections, cat_index, img_index, num_images)

    d_cls, tp, kept = _match_devkit(g_key, g_boxes, g_diff, d_cls, d_key, d_boxes, d_score,
                                    iou_thresh)

    g_cls = g_key // num_images
    num_gt = np.bincount(g_cls[~g_diff], minlength=len(names))
    num_diff = np.bincount(g_cls[g_diff], minlength=len(names))
    bounds = np.searchsorted(d_cls, np.arange(len(names) + 1))  # d_cls is sorted
    per07, per10, curves, tps, ndet = {}, {}, {}, {}, {}
    for k, name in enumerate(names):
        sl = slice(bounds[k], bounds[k + 1])
        is_tp = tp[sl][kept[sl]]
        ctp = np.cumsum(is_tp, dtype=np.float64)
        recall = ctp / max(num_gt[k], 1)
        precision = ctp / np.arange(1, is_tp.size + 1, dtype=np.float64)
        curves[name] = {"recall": recall, "precision": precision}
        tps[name] = int(is_tp.sum())
        ndet[name] = int(bounds[k + 1] - bounds[k])
        if num_gt[k] == 0:
            per07[name] = per10[name] = float("nan")
        else:
            per07[name] = voc_ap_11_point(recall, precision)
            per10[name] = voc_ap_all_point(recall, precision)
    with_gt = [n for k, n in enumerate(names) if num_gt[k] > 0]
    return {
        "voc07_map": float(np.mean([per07[n] for n in with_gt])) if with_gt else float("nan"),
        "voc10_map": float(np.mean([per10[n] for n in with_gt])) if with_gt else float("nan"),
        "per_class_voc07": per07,
        "per_class_voc10": per10,
        "num_gt": {n: int(num_gt[k]) for k, n in enumerate(names)},
        "num_difficult": {n: int(num_diff[k]) for k, n in enumerate(names)},
        "num_detections": ndet,
        "tp": tps,
        "pr_curves": curves,
        "iou_thresh": float(iou_thresh),
    }


def _match_devkit(g_key: np.ndarray, g_boxes: np.ndarray, g_diff: np.ndarray, d_cls: np.ndarray,
                  d_key: np.ndarray, d_boxes: np.ndarray, d_score: np.ndarray, iou_thresh: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The devkit's matching, vectorised: detections ranked by (class, score descending), and
    per ranked detection whether it is a TP and whether it counts at all (not ignored).
    Returns (d_cls, tp, kept) in rank order."""
    best_gt, ovmax = _best_gt_per_detection(g_key, g_boxes, d_key, d_boxes)

    # Rank by class, then score descending: the devkit's loop order within each class.
    order = np.lexsort((-d_score, d_cls))  # lexsort is stable: ties keep input order
    d_cls, best_gt, ovmax = d_cls[order], best_gt[order], ovmax[order]
    hit = ovmax > iou_thresh  # devkit: `if ovmax > MINOVERLAP`
    hit_difficult = np.zeros_like(hit)
    hit_difficult[hit] = g_diff[best_gt[hit]]
    candidate = hit & ~hit_difficult
    # Whether a GT is already matched depends only on earlier detections of its class, and every
    # detection's choice of GT ignores that state: so the TP of each GT is simply the first
    # candidate in rank order that chose it; later ones are duplicates (FP). No Python loop needed.
    tp = np.zeros_like(hit)
    cand_pos = np.flatnonzero(candidate)
    _, first = np.unique(best_gt[cand_pos], return_index=True)
    tp[cand_pos[first]] = True
    kept = ~hit_difficult  # ignored detections are neither TP nor FP
    return d_cls, tp, kept


def _xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    b = b.reshape(-1, 4).astype(np.float64)
    return np.concatenate((b[:, :2], b[:, :2] + b[:, 2:]), axis=1)


def _gt_arrays(anns: Sequence[dict[str, Any]], cat_index: dict[int, int],
               img_index: dict[int, int], num_images: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GT sorted by (class, image) key, annotation order kept within a group (the devkit's argmax
    tie-break): key (G,) = class * num_images + image, boxes (G, 4) xyxy, difficult (G,) bool."""
    key = np.array([cat_index[a["category_id"]] * num_images + img_index[a["image_id"]]
                    for a in anns], dtype=np.int64)
    boxes = _xywh_to_xyxy(np.array([a["bbox"] for a in anns], dtype=np.float64))
    diff = np.array([bool(a.get("difficult", a.get("iscrowd", 0))) for a in anns], dtype=bool)
    order = np.argsort(key, kind="stable")
    return key[order], boxes[order], diff[order]


def _det_arrays(dets: Sequence[dict[str, Any]], cat_index: dict[int, int],
                img_index: dict[int, int], num_images: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """class index (D,), key (D,) as in `_gt_arrays`, boxes (D, 4) xyxy, scores (D,)."""
    cls = np.array([cat_index[d["category_id"]] for d in dets], dtype=np.int64)
    img = np.array([img_index[d["image_id"]] for d in dets], dtype=np.int64)
    boxes = _xywh_to_xyxy(np.array([d["bbox"] for d in dets], dtype=np.float64))
    scores = np.array([d["score"] for d in dets], dtype=np.float64)
    return cls, cls * num_images + img, boxes, scores


def _best_gt_per_detection(g_key: np.ndarray, g_boxes: np.ndarray, d_key: np.ndarray,
                           d_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each detection, the index into the sorted GT of its highest-IoU GT of the same image and
    class, and that IoU (-inf and -1 when there is none) -> best (D,) int, ovmax (D,) float.

    All (detection, GT) pairs that share a key are enumerated at once: each detection's GT is a
    contiguous run of the sorted GT, found by binary search, so the work is O(pairs).
    """
    lo = np.searchsorted(g_key, d_key, side="left")
    counts = np.searchsorted(g_key, d_key, side="right") - lo
    total = int(counts.sum())
    pair_det = np.repeat(np.arange(d_key.size), counts)
    run_start = np.cumsum(counts) - counts
    pair_gt = lo[pair_det] + np.arange(total) - run_start[pair_det]
    iou = iou_xyxy(d_boxes[pair_det], g_boxes[pair_gt])
    best = np.full(d_key.size, -1, dtype=np.int64)
    ovmax = np.full(d_key.size, -np.inf)
    if total:
        # per detection: highest IoU first, then the earliest GT (np.argmax's tie-break)
        order = np.lexsort((pair_gt, -iou, pair_det))
        first = order[np.r_[True, pair_det[order][1:] != pair_det[order][:-1]]]
        best[pair_det[first]] = pair_gt[first]
        ovmax[pair_det[first]] = iou[first]
    return best, ovmax

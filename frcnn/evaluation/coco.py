"""COCO-style metrics with pycocotools' COCOeval (bbox): mAP@[.5:.95], AP50, AP75, AP by size,
and per-class AP50 / AP. The inputs and how VOC's difficult objects map to crowd GT:
frcnn/evaluation/voc.py's docstring."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from frcnn.evaluation.voc import check_image_ids


def coco_metrics(gt: dict[str, Any], detections: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """COCO bbox metrics of `detections` against `gt` with pycocotools (its prints are captured).

    Returns floats map (AP@[.5:.95]), ap50, ap75, ap_small, ap_medium, ap_large, ar100, and
    per_class_ap50 / per_class_ap: {class name: AP} (NaN for a class without non-crowd GT).
    Neither argument is modified (pycocotools writes into both, so it gets copies).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    check_image_ids(gt, detections)
    names = [c["name"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
    cat_ids = sorted(c["id"] for c in gt["categories"])
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        # shallow copies: _prepare sets `ignore` on every GT annotation, loadRes adds `area`, `id`...
        coco_gt.dataset = {**gt, "annotations": [dict(a) for a in gt["annotations"]]}
        coco_gt.createIndex()
        if detections:
            coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        else:  # loadRes reads anns[0] and fails on an empty list: an empty result set is legal
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(gt["images"]), "categories": list(gt["categories"]),
                               "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) for s in ev.stats]
    # precision: (T IoUs, R recall points, K classes, A area ranges, M maxDets); -1 = no GT
    precision = ev.eval["precision"][:, :, :, 0, -1]  # area "all", maxDets 100
    k_index = {cid: k for k, cid in enumerate(ev.params.catIds)}
    per_ap50, per_ap = {}, {}
    for name, cid in zip(names, cat_ids):
        p = precision[:, :, k_index[cid]]
        per_ap50[name] = _mean_valid(p[0])  # iouThrs[0] == 0.5
        per_ap[name] = _mean_valid(p)
    keys = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
    out: dict[str, Any] = {k: _nan_if_negative(v) for k, v in zip(keys, stats[:6])}
    out["ar100"] = _nan_if_negative(stats[8])
    out["per_class_ap50"] = per_ap50
    out["per_class_ap"] = per_ap
    return out



def _mean_valid(p: np.ndarray) -> float:
    valid = p[p > -1]
    return float(valid.mean()) if valid.size else float("nan")



def _nan_if_negative(v: float) -> float:
    return float("nan") if v < 0 else v  # pycocotools' -1 = "no GT to evaluate"

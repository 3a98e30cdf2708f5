"""Where the lost AP goes: the TIDE error breakdown (Bolya et al., ECCV 2020) on VOC's rules.

Detections are matched as the VOC devkit does at IoU t_f = 0.5 (`voc.voc_metrics`): per class in
descending score order, each takes its image's same-class GT of highest IoU; a hit on a difficult
GT is ignored, a first hit on another is a true positive. Every false positive then gets one type
from its highest-IoU GT of the image, of any class:

    duplicate       IoU >= t_f, right class (that GT was already matched by a higher score)
    classification  IoU >= t_f, wrong class
    localisation    t_b <= IoU < t_f, right class
    both            t_b <= IoU < t_f, wrong class
    background      IoU < t_b with every GT (t_b = 0.1)

and a non-difficult GT that no detection matched, and that no classification or localisation
error lies on (those are counted there), is `missed`. For each type, ΔAP50 is the AP50
after an oracle fixes that type alone, minus the AP50: classification errors are relabelled to
their GT's class, localisation errors snapped onto their GT, both / duplicate / background errors
dropped, missed GT dropped from the count. AP50 is VOC's all-point AP at IoU 0.5 (the devkit's
VOC2010+ rule), averaged over the classes with GT.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from frcnn.evaluation.voc import voc_metrics

ERROR_TYPES = ("classification", "localisation", "both", "duplicate", "background", "missed")


def _xyxy(bbox: Sequence[float]) -> np.ndarray:
    x, y, w, h = bbox
    return np.array([x, y, x + w, y + h], dtype=np.float64)


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a (N, 4), b (M, 4) xyxy, continuous -> (N, M) IoU."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / np.maximum(union, np.finfo(np.float64).eps)


def classify_detections(gt: dict[str, Any], detections: Sequence[dict[str, Any]],
                        t_f: float = 0.5, t_b: float = 0.1
                        ) -> tuple[list[str], list[int], np.ndarray]:
    """-> (type of each detection: "tp", "ignored" or an error type; the index into
    `gt["annotations"]` of its highest-IoU GT of any class (-1 for a TP, an ignored one or an
    image without GT); missed (G,) bool)."""
    anns = gt["annotations"]
    g_boxes = np.array([_xyxy(a["bbox"]) for a in anns]).reshape(-1, 4)
    g_cls = np.array([a["category_id"] for a in anns], dtype=np.int64)
    g_diff = np.array([bool(a.get("difficult", a.get("iscrowd", 0))) for a in anns], dtype=bool)
    by_image: dict[int, np.ndarray] = {}
    for g, a in enumerate(anns):
        by_image.setdefault(a["image_id"], []).append(g)  # type: ignore[attr-defined]
    by_image = {k: np.array(v, dtype=np.int64) for k, v in by_image.items()}

    scores = np.array([d["score"] for d in detections], dtype=np.float64)
    classes = np.array([d["category_id"] for d in detections], dtype=np.int64)
    order = np.lexsort((-scores, classes))  # the devkit's order: per class, score descending
    types = ["" for _ in detections]
    best_any = [-1 for _ in detections]
    matched = np.zeros(len(anns), dtype=bool)
    for d in order:
        det = detections[d]
        cand = by_image.get(det["image_id"], np.zeros(0, dtype=np.int64))
        if cand.size == 0:
            types[d] = "background"
            continue
        iou = pairwise_iou(_xyxy(det["bbox"])[None], g_boxes[cand])[0]
        same = g_cls[cand] == det["category_id"]
        if same.any():
            k = int(np.argmax(np.where(same, iou, -np.inf)))
            if iou[k] > t_f:  # the devkit's strict `ovmax > MINOVERLAP`
                g = cand[k]
                if g_diff[g]:
                    types[d] = "ignored"
                    continue
                if not matched[g]:
                    matched[g] = True
                    types[d] = "tp"
                    continue
        k = int(np.argmax(iou))
        best_any[d] = int(cand[k])
        right = bool(same[k])
        if iou[k] >= t_f:
            types[d] = "duplicate" if right else "classification"
        elif iou[k] >= t_b:
            types[d] = "localisation" if right else "both"
        else:
            types[d] = "background"
    covered = np.zeros(len(anns), dtype=bool)
    for t, g in zip(types, best_any):
        if t in ("classification", "localisation"):
            covered[g] = True
    return types, best_any, ~matched & ~g_diff & ~covered


def tide_breakdown(gt: dict[str, Any], detections: Sequence[dict[str, Any]],
                   t_f: float = 0.5, t_b: float = 0.1) -> dict[str, Any]:
    """-> {ap50, counts: {type: n}, delta_ap50: {type: ΔAP50}, num_tp, num_gt, t_f, t_b}."""
    detections = list(detections)
    types, best, missed = classify_detections(gt, detections, t_f, t_b)
    anns = gt["annotations"]

    def ap50(dets: list[dict[str, Any]], g: dict[str, Any] = gt) -> float:
        return float(voc_metrics(g, dets, iou_thresh=t_f)["voc10_map"])

    base = ap50(detections)
    delta = {}
    for kind in ERROR_TYPES[:-1]:
        fixed = []
        for det, t, g in zip(detections, types, best):
            if t != kind:
                fixed.append(det)
            elif kind == "classification":
                fixed.append({**det, "category_id": anns[g]["category_id"]})
            elif kind == "localisation":
                fixed.append({**det, "bbox": list(anns[g]["bbox"])})
            # both, duplicate, background: the oracle drops the detection
        delta[kind] = ap50(fixed) - base
    kept = [a for a, m in zip(anns, missed) if not m]
    delta["missed"] = ap50(detections, {**gt, "annotations": kept}) - base
    counts = {kind: sum(t == kind for t in types) for kind in ERROR_TYPES[:-1]}
    counts["missed"] = int(missed.sum())
    return {"ap50": base, "counts": counts, "delta_ap50": delta,
            "num_tp": sum(t == "tp" for t in types),
            "num_gt": int(sum(not bool(a.get("difficult", a.get("iscrowd", 0))) for a in anns)),
            "t_f": t_f, "t_b": t_b}

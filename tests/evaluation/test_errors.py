"""The TIDE breakdown on a hand-built case whose every type and ΔAP50 is known, and its matching
against the VOC devkit's (voc_metrics) on random detections."""

import numpy as np
import pytest

from frcnn.evaluation.errors import classify_detections, tide_breakdown
from frcnn.evaluation.voc import voc_metrics

A, B = 1, 2


def _gt():
    anns = [
        {"id": 1, "image_id": 1, "category_id": A, "bbox": [0, 0, 10, 10]},
        {"id": 2, "image_id": 1, "category_id": B, "bbox": [20, 20, 10, 10]},
        {"id": 3, "image_id": 2, "category_id": A, "bbox": [0, 0, 10, 10], "difficult": 1},
        {"id": 4, "image_id": 3, "category_id": A, "bbox": [50, 50, 10, 10]},  # nobody finds it
    ]
    return {"images": [{"id": i, "width": 100, "height": 100} for i in (1, 2, 3)],
            "categories": [{"id": A, "name": "a"}, {"id": B, "name": "b"}], "annotations": anns}


DETS = [
    {"image_id": 1, "category_id": A, "bbox": [0, 0, 10, 10], "score": 0.9},    # TP
    {"image_id": 1, "category_id": A, "bbox": [0, 0, 10, 10], "score": 0.8},    # duplicate
    {"image_id": 1, "category_id": A, "bbox": [20, 20, 10, 10], "score": 0.7},  # classification
    {"image_id": 1, "category_id": B, "bbox": [25, 20, 10, 10], "score": 0.6},  # localisation, IoU 1/3
    {"image_id": 1, "category_id": B, "bbox": [4, 0, 10, 10], "score": 0.5},    # both: 0.43 with A
    {"image_id": 1, "category_id": A, "bbox": [80, 80, 5, 5], "score": 0.4},    # background
    {"image_id": 2, "category_id": A, "bbox": [0, 0, 10, 10], "score": 0.3},    # on a difficult GT
]


def test_each_false_positive_gets_its_type_and_missed_gt_are_the_uncovered_ones():
    types, best, missed = classify_detections(_gt(), DETS)
    assert types == ["tp", "duplicate", "classification", "localisation", "both", "background",
                     "ignored"]
    assert best[2] == 1 and best[3] == 1 and best[4] == 0  # indices into annotations
    # B's GT was never matched, but a localisation error lies on it: not counted as missed too
    assert missed.tolist() == [False, False, False, True]


def test_delta_ap50_is_what_each_oracle_fix_buys():
    # AP50 (all-point): class a 0.5 (1 of its 2 GT found, first), class b 0 -> mAP 0.25
    out = tide_breakdown(_gt(), DETS)
    assert out["ap50"] == pytest.approx(0.25)
    assert out["counts"] == {"classification": 1, "localisation": 1, "both": 1, "duplicate": 1,
                             "background": 1, "missed": 1}
    assert out["delta_ap50"] == pytest.approx({
        "classification": 0.5,   # relabelled to b, it finds b's GT first: b 1.0
        "localisation": 0.5,     # snapped onto b's GT: b 1.0
        "both": 0.0, "duplicate": 0.0, "background": 0.0,  # below the TP in rank: no AP change
        "missed": 0.25,          # a's unfound GT gone: a 1.0
    })
    assert out["num_tp"] == 1 and out["num_gt"] == 3


def test_duplicates_and_background_above_the_true_positive_cost_ap():
    dets = [{**DETS[0], "score": 0.5}, {**DETS[1], "score": 0.6}, {**DETS[5], "score": 0.9}]
    out = tide_breakdown(_gt(), dets)
    # the higher-scored copy is the TP, the later one the duplicate; the background FP ranks first
    assert classify_detections(_gt(), dets)[0] == ["duplicate", "tp", "background"]
    assert out["delta_ap50"]["background"] > 0 and out["delta_ap50"]["duplicate"] == 0


def test_true_positives_agree_with_the_devkit_matching_on_random_detections():
    rng = np.random.default_rng(0)
    images = [{"id": i, "width": 200, "height": 200} for i in range(1, 21)]
    anns, dets = [], []
    for im in images:
        for _ in range(rng.integers(0, 4)):
            x, y = rng.uniform(0, 150, 2)
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": int(rng.integers(1, 4)),
                         "bbox": [x, y, rng.uniform(10, 50), rng.uniform(10, 50)],
                         "difficult": int(rng.random() < 0.15)})
    for a in anns:
        for _ in range(rng.integers(0, 3)):
            x, y, w, h = a["bbox"]
            dets.append({"image_id": a["image_id"], "category_id": int(rng.integers(1, 4)),
                         "bbox": [x + rng.normal(0, 5), y + rng.normal(0, 5), w, h],
                         "score": float(rng.random())})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": k, "name": str(k)} for k in (1, 2, 3)]}
    types, _, _ = classify_detections(gt, dets)
    assert sum(t == "tp" for t in types) == sum(voc_metrics(gt, dets)["tp"].values())
    out = tide_breakdown(gt, dets)
    assert out["ap50"] == pytest.approx(voc_metrics(gt, dets)["voc10_map"])
    # dropping a false positive or an unfindable GT can only raise precision or recall
    assert all(out["delta_ap50"][k] >= -1e-12 for k in ("both", "duplicate", "background", "missed"))

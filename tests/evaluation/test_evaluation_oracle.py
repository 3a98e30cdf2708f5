"""frcnn.evaluation and the per-class table against oracles, on imperfect detections.

Every number the evaluate stage writes to reports/metrics.json (map, ap50, ap75, ap_small,
ap_medium, ap_large from `coco_metrics`; voc07_ap50, voc10_ap50 from `voc_metrics`'s voc07_map and
voc10_map) and every column of reports/per_class_ap.csv (`write_per_class_csv`) is compared with:
- pycocotools' COCOeval run directly here, each metric read out of its precision array by IoU
  threshold and area-range label (not by position in `stats`, so a swapped key shows), and the
  per-class columns from a separate COCOeval run restricted to that class (`params.catIds`);
- the VOC devkit's voc_eval loop, transcribed (np.argmax, per-image `det` flags, difficult
  detections left in the curve as repeated points);
- counts of non-difficult / difficult GT by hand.
The data: jittered boxes, duplicates, wrong classes, false positives, misses, some difficult
objects, small / medium / large objects in every class, and a class with no GT at all.

The devkit's tie-break between GT boxes (a detection with equal IoU to two GT takes the first in
annotation order: np.argmax) is checked by hand, including a difficult/non-difficult pair.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import math
from pathlib import Path

import numpy as np
import pytest

from frcnn.evaluation.coco import coco_metrics
from frcnn.evaluation.voc import iou_xyxy, voc_metrics
from frcnn.evaluation.tables import write_per_class_csv

CLASSES = ("cat", "dog", "cow", "empty")   # "empty": detections only, no GT -> NaN everywhere
IMAGE_SIZE = 320                            # room for large objects (area > 96^2)
AREA_RANGES = {"small": (1, 28), "medium": (40, 90), "large": (110, 220)}   # side lengths, px


def det(img: int, cat: int, xyxy, score: float) -> dict:
    x1, y1, x2, y2 = xyxy
    return {"image_id": img, "category_id": cat, "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(score)}


def make_gt(objects, num_images: int, classes=CLASSES) -> dict:
    """objects: (image_id, category_id, xyxy, difficult) -> COCO GT dict as preprocess writes it."""
    anns = []
    for i, (img, cat, (x1, y1, x2, y2), diff) in enumerate(objects):
        anns.append({"id": i + 1, "image_id": img, "category_id": cat,
                     "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                     "iscrowd": int(diff), "difficult": int(diff), "truncated": 0})
    return {"images": [{"id": i, "file_name": f"{i}.jpg", "width": IMAGE_SIZE,
                        "height": IMAGE_SIZE} for i in range(1, num_images + 1)],
            "annotations": anns,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(classes)]}


def imperfect_case(seed: int, num_images: int = 16) -> tuple[dict, list[dict]]:
    """GT of three classes in three sizes; detections that are jittered (more, relatively, for
    small objects, so AP falls with the IoU threshold), duplicated, of the wrong class, missing,
    or plain false positives (also of the class without GT). Scores have no ties."""
    rng = np.random.default_rng(seed)
    objects, dets = [], []
    for img in range(1, num_images + 1):
        for _ in range(rng.integers(2, 7)):
            bucket = list(AREA_RANGES)[rng.integers(0, 3)]
            lo, hi = AREA_RANGES[bucket]
            w, h = rng.uniform(max(lo, 8), hi, 2)
            x, y = rng.uniform(0, IMAGE_SIZE - w), rng.uniform(0, IMAGE_SIZE - h)
            cat = int(rng.integers(1, 4))
            objects.append((img, cat, (x, y, x + w, y + h), int(rng.random() < 0.1)))
            if rng.random() < 0.15:
                continue                                        # a miss
            for copy_ in range(1 + int(rng.random() < 0.3)):    # sometimes a duplicate
                j = rng.normal(0, 0.08, 4) * [w, h, w, h]
                c = cat if rng.random() < 0.9 else int(rng.integers(1, 4))
                score = rng.uniform(0.3, 1.0) if copy_ == 0 else rng.uniform(0.0, 0.6)
                dets.append(det(img, c, (x + j[0], y + j[1], x + w + j[2], y + h + j[3]), score))
        for _ in range(rng.integers(1, 4)):                     # false positives
            s = rng.uniform(10, 120)
            x, y = rng.uniform(0, IMAGE_SIZE - s, 2)
            dets.append(det(img, int(rng.integers(1, 5)), (x, y, x + s, y + s), rng.uniform(0, 0.7)))
    return make_gt(objects, num_images), dets


# ------------------------------------------------------------------ oracles


def run_cocoeval(gt: dict, dets: list[dict], cat_ids: list[int] | None = None):
    """pycocotools' COCOeval, bbox, run directly (on copies: it writes into its inputs)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def cocoeval_ap(ev, iou: float | None = None, area: str = "all") -> float:
    """AP as COCOeval.summarize computes it, selected by name: IoU threshold (None: all of
    .5:.95), area label, maxDets 100; -1 (nothing to evaluate) -> NaN."""
    p = ev.params
    precision = ev.eval["precision"]          # (T, R, K, A, M)
    t = slice(None) if iou is None else np.flatnonzero(np.isclose(p.iouThrs, iou))
    s = precision[t][:, :, :, p.areaRngLbl.index(area), p.maxDets.index(100)]
    valid = s[s > -1]
    return float(valid.mean()) if valid.size else float("nan")


def devkit_voc_eval(gt: dict, dets: list[dict], cat: int, thresh: float = 0.5
                    ) -> tuple[float, float]:
    """py-faster-rcnn's voc_eval for one class, transcribed, continuous IoU -> (VOC07, VOC2010)."""
    recs = {img["id"]: {"bbox": [], "difficult": []} for img in gt["images"]}
    for a in gt["annotations"]:         # annotation order: the order np.argmax breaks ties in
        if a["category_id"] == cat:
            x, y, w, h = a["bbox"]
            recs[a["image_id"]]["bbox"].append([x, y, x + w, y + h])
            recs[a["image_id"]]["difficult"].append(bool(a["difficult"]))
    npos = 0
    for r in recs.values():
        r["bbox"] = np.array(r["bbox"], dtype=np.float64).reshape(-1, 4)
        r["difficult"] = np.array(r["difficult"], dtype=bool)
        r["det"] = [False] * len(r["difficult"])
        npos += int((~r["difficult"]).sum())
    mine = [d for d in dets if d["category_id"] == cat]
    sorted_ind = np.argsort([-d["score"] for d in mine])
    nd = len(mine)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for rank in range(nd):
        d = mine[sorted_ind[rank]]
        r = recs[d["image_id"]]
        x, y, w, h = d["bbox"]
        ovmax = -np.inf
        if r["bbox"].size > 0:
            overlaps = iou_xyxy(np.tile([[x, y, x + w, y + h]], (len(r["bbox"]), 1)), r["bbox"])
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > thresh:
            if not r["difficult"][jmax]:
                if not r["det"][jmax]:
                    tp[rank] = 1.0
                    r["det"][jmax] = True
                else:
                    fp[rank] = 1.0
        else:
            fp[rank] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    ap07 = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        p = 0.0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
        ap07 += p / 11.0
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(ap07), float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def classes_with_gt(gt: dict) -> list[int]:
    return sorted({a["category_id"] for a in gt["annotations"] if not a["difficult"]})


# ------------------------------------------------------------------ metrics.json


@pytest.mark.parametrize("seed", [0, 1])
def test_every_coco_metric_of_metrics_json_equals_cocoeval_run_directly(seed):
    gt, dets = imperfect_case(seed)
    ours = coco_metrics(gt, dets)
    ev = run_cocoeval(gt, dets)
    expected = {"map": cocoeval_ap(ev), "ap50": cocoeval_ap(ev, 0.5), "ap75": cocoeval_ap(ev, 0.75),
                "ap_small": cocoeval_ap(ev, area="small"),
                "ap_medium": cocoeval_ap(ev, area="medium"),
                "ap_large": cocoeval_ap(ev, area="large")}
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key
    # the case separates the metrics: any two keys swapped would give a different number
    values = sorted(expected.values())
    assert all(math.isfinite(v) for v in values) and min(np.diff(values)) > 1e-3
    assert 0.05 < expected["map"] < 0.9


@pytest.mark.parametrize("seed", [0, 1])
def test_voc07_and_voc10_ap50_of_metrics_json_equal_the_devkit_loop(seed):
    gt, dets = imperfect_case(seed)
    ours = voc_metrics(gt, dets)
    per = [devkit_voc_eval(gt, dets, cat) for cat in classes_with_gt(gt)]
    assert len(per) == 3                      # "empty" has no GT and is left out of the means
    assert ours["voc07_map"] == pytest.approx(np.mean([p[0] for p in per]), abs=1e-12)
    assert ours["voc10_map"] == pytest.approx(np.mean([p[1] for p in per]), abs=1e-12)
    assert abs(ours["voc07_map"] - ours["voc10_map"]) > 1e-3 and 0.2 < ours["voc10_map"] < 0.95


# ------------------------------------------------------------------ per_class_ap.csv


def test_every_column_of_the_per_class_table_equals_the_oracles(tmp_path: Path):
    gt, dets = imperfect_case(2)
    path = tmp_path / "per_class_ap.csv"
    write_per_class_csv(path, coco_metrics(gt, dets), voc_metrics(gt, dets), list(CLASSES))
    rows = list(csv.DictReader(path.open()))
    assert [r["class"] for r in rows] == list(CLASSES)
    assert list(rows[0]) == ["class", "ap50_coco", "ap_coco", "voc07_ap50", "voc10_ap50",
                             "num_gt", "num_difficult"]
    at_055 = []
    for cat, row in enumerate(rows, start=1):
        anns = [a for a in gt["annotations"] if a["category_id"] == cat]
        assert int(row["num_gt"]) == sum(not a["difficult"] for a in anns)
        assert int(row["num_difficult"]) == sum(bool(a["difficult"]) for a in anns)
        ev = run_cocoeval(gt, dets, cat_ids=[cat])        # pycocotools on this class alone
        if not anns:
            assert row["ap50_coco"] == row["ap_coco"] == row["voc07_ap50"] == row["voc10_ap50"] == "nan"
            assert math.isnan(cocoeval_ap(ev))
            continue
        # the table rounds to 4 decimals
        assert float(row["ap50_coco"]) == pytest.approx(cocoeval_ap(ev, 0.5), abs=5e-5)
        assert float(row["ap_coco"]) == pytest.approx(cocoeval_ap(ev), abs=5e-5)
        assert float(row["ap_coco"]) == pytest.approx(ev.stats[0], abs=5e-5)  # its own summary
        ap07, ap10 = devkit_voc_eval(gt, dets, cat)
        assert float(row["voc07_ap50"]) == pytest.approx(ap07, abs=5e-5)
        assert float(row["voc10_ap50"]) == pytest.approx(ap10, abs=5e-5)
        at_055.append(abs(cocoeval_ap(ev, 0.55) - cocoeval_ap(ev)))
    # AP at a single IoU is not the mean over .5:.95 here, so a column at one threshold shows
    assert len(at_055) == 3 and min(at_055) > 0.01


def test_per_class_ap_is_the_mean_over_all_ten_iou_thresholds_by_hand():
    # One cat GT, [0, 0, 100, 100], and one detection [0, 0, 100, 82] (IoU 0.82, clear of any
    # threshold): a TP at .5 .. .8 (7 of 10), a miss at .85 .. .95 -> AP@[.5:.95] = 0.7, AP50 = 1.
    gt = make_gt([(1, 1, (0.0, 0.0, 100.0, 100.0), 0)], 1, classes=("cat",))
    coco = coco_metrics(gt, [det(1, 1, (0.0, 0.0, 100.0, 82.0), 0.9)])
    assert coco["per_class_ap"]["cat"] == pytest.approx(0.7)
    assert coco["per_class_ap50"]["cat"] == pytest.approx(1.0)
    assert coco["map"] == pytest.approx(0.7) and coco["ap75"] == pytest.approx(1.0)
    # a large object (area 10^4 > 96^2): small and medium have nothing to evaluate
    assert coco["ap_large"] == pytest.approx(0.7)
    assert math.isnan(coco["ap_small"]) and math.isnan(coco["ap_medium"])


# ------------------------------------------------------------------ devkit tie-break by hand

# A detection [1, 0, 11, 10] overlaps G1 = [0, 0, 10, 10] and G2 = [2, 0, 12, 10] equally
# (IoU 90 / 110 each, computed with the same exact operations): the devkit's np.argmax takes the
# one listed first in the annotations.
G1, G2, TIED = (0.0, 0.0, 10.0, 10.0), (2.0, 0.0, 12.0, 10.0), (1.0, 0.0, 11.0, 10.0)


def test_the_tie_is_exact():
    iou = iou_xyxy(np.array([TIED, TIED]), np.array([G1, G2]))
    assert iou[0] == iou[1] == pytest.approx(9 / 11)


@pytest.mark.parametrize("first, expected_tp", [(G1, 2), (G2, 1)], ids=["G1_first", "G2_first"])
def test_a_tied_detection_takes_the_gt_listed_first(first, expected_tp):
    # Then a second detection exactly on G2: a TP if the tied one took G1, a duplicate (FP) if it
    # took G2. Which one is listed first decides, not the coordinates.
    second = G2 if first == G1 else G1
    gt = make_gt([(1, 1, first, 0), (1, 1, second, 0)], 1, classes=("cat",))
    dets = [det(1, 1, TIED, 0.9), det(1, 1, G2, 0.8)]
    voc = voc_metrics(gt, dets)
    assert voc["tp"]["cat"] == expected_tp
    # 2 TP: AP 1; TP then FP: recall .5, .5, precision 1, 1/2 -> AP .5
    assert voc["per_class_voc10"]["cat"] == pytest.approx(1.0 if expected_tp == 2 else 0.5)
    assert devkit_voc_eval(gt, dets, 1)[1] == pytest.approx(voc["per_class_voc10"]["cat"])


def tie_case(difficult_first: bool, others: list[tuple], a: int, b: int) -> dict:
    """GT: `others` with the tied pair (difficult G1, regular G2, in the order asked) inserted at
    positions a <= b of the list."""
    hard, regular = (1, 1, G1, 1), (1, 1, G2, 0)
    first, second = (hard, regular) if difficult_first else (regular, hard)
    objects = others[:a] + [first] + others[a:b] + [second] + others[b:]
    return make_gt(objects, 2, classes=("cat", "dog"))


@pytest.mark.parametrize("num_others", [3, 40])
@pytest.mark.parametrize("difficult_first", [True, False])
def test_a_tie_between_a_difficult_and_a_regular_gt_goes_to_the_first_listed(difficult_first,
                                                                            num_others):
    # difficult first: the detection is ignored and the regular GT stays missed (AP 0);
    # regular first: a TP. Other annotations (far away, of this and other images and classes)
    # surround the pair at many placements, to check that grouping GT by (class, image) keeps the
    # annotation order within a group: with 40 of them an unstable sort would reorder the pair at
    # some placements (numpy's sort is insertion sort, stable, below 17 elements only).
    groups = [(1, 1), (2, 1), (1, 2), (2, 2)]            # (image, class)
    others = [(*groups[i % 4], (100.0 + 5 * i, 50.0, 104.0 + 5 * i, 60.0), int(i % 3 == 1))
              for i in range(num_others)]
    num_gt = 1 + sum(not d for _, c, _, d in others if c == 1)
    dets = [det(1, 1, TIED, 0.9)]
    placements = [(a, b) for a in range(0, num_others + 1, 3) for b in range(a, num_others + 1, 2)]
    for a, b in placements:
        gt = tie_case(difficult_first, others, a, b)
        voc = voc_metrics(gt, dets)
        assert voc["num_gt"]["cat"] == num_gt, (a, b)
        assert voc["tp"]["cat"] == (0 if difficult_first else 1), (a, b)
        assert voc["pr_curves"]["cat"]["recall"].size == (0 if difficult_first else 1), (a, b)
        # one TP at precision 1: AP = recall = 1 / num_gt
        expected = 0.0 if difficult_first else 1 / num_gt
        assert voc["per_class_voc10"]["cat"] == pytest.approx(expected), (a, b)
    assert devkit_voc_eval(gt, dets, 1)[1] == pytest.approx(expected)

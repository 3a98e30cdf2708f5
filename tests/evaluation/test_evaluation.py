"""Metrics on hand-built cases with exactly known AP, the devkit's rules, and pycocotools agreement."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from frcnn.evaluation.coco import coco_metrics
from frcnn.evaluation.voc import iou_xyxy, voc_metrics

CLASSES = ("cat", "dog")


def make_gt(objects, num_images: int = 1, classes=CLASSES) -> dict:
    """objects: (image_id, category_id, xyxy, difficult) -> a COCO GT dict as preprocess writes it."""
    anns = []
    for i, (img, cat, (x1, y1, x2, y2), diff) in enumerate(objects):
        anns.append({"id": i + 1, "image_id": img, "category_id": cat,
                     "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                     "iscrowd": int(diff), "difficult": int(diff), "truncated": 0})
    return {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100}
                       for i in range(1, num_images + 1)],
            "annotations": anns,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(classes)]}


def det(img: int, cat: int, xyxy, score: float) -> dict:
    x1, y1, x2, y2 = xyxy
    return {"image_id": img, "category_id": cat, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}


A, B, C, D = (0, 0, 10, 10), (50, 50, 60, 60), (20, 20, 30, 30), (70, 0, 90, 20)
FAR = (30, 70, 40, 80)  # overlaps none of them


def test_tp_fp_tp_exact_ap() -> None:
    gt = make_gt([(1, 1, A, 0), (1, 1, B, 0)])
    dets = [det(1, 1, A, 0.9), det(1, 1, FAR, 0.8), det(1, 1, B, 0.7)]
    # ranks: TP, FP, TP -> recall .5, .5, 1; precision 1, 1/2, 2/3
    # envelope: 1 on recall (0, .5], 2/3 on (.5, 1]
    # VOC2010 all-point: .5 * 1 + .5 * 2/3 = 5/6
    # VOC07: t = 0 .. .5 (6 points) -> 1, t = .6 .. 1 (5 points) -> 2/3: (6 + 10/3) / 11 = 28/33
    # COCO 101-point: t = 0 .. .5 (51 points) -> 1, .51 .. 1 (50) -> 2/3: (51 + 100/3) / 101
    voc = voc_metrics(gt, dets)
    assert voc["per_class_voc10"]["cat"] == pytest.approx(5 / 6)
    assert voc["per_class_voc07"]["cat"] == pytest.approx(28 / 33)
    np.testing.assert_allclose(voc["pr_curves"]["cat"]["recall"], [0.5, 0.5, 1.0])
    np.testing.assert_allclose(voc["pr_curves"]["cat"]["precision"], [1.0, 0.5, 2 / 3])
    assert voc["tp"]["cat"] == 2 and voc["num_gt"]["cat"] == 2
    coco = coco_metrics(gt, dets)
    assert coco["per_class_ap50"]["cat"] == pytest.approx((51 + 100 / 3) / 101)
    # recall steps are multiples of .01, so the 101-point mean is exactly (100 * area + p(0)) / 101
    assert coco["ap50"] == pytest.approx((100 * voc["voc10_map"] + 1.0) / 101)
    # input order does not matter: detections are ranked by score
    assert voc_metrics(gt, dets[::-1])["per_class_voc10"]["cat"] == pytest.approx(5 / 6)


def test_fp_tp_tp_fp_tp_with_a_miss() -> None:
    gt = make_gt([(1, 1, A, 0), (1, 1, B, 0), (1, 1, C, 0), (1, 1, D, 0)])
    dets = [det(1, 1, FAR, 0.95), det(1, 1, A, 0.9), det(1, 1, B, 0.8),
            det(1, 1, (80, 80, 90, 90), 0.7), det(1, 1, C, 0.6)]
    # ranks FP TP TP FP TP: recall 0 .25 .5 .5 .75, precision 0 1/2 2/3 1/2 3/5
    # envelope: 2/3 up to recall .5, 3/5 up to .75, 0 after (D is never found)
    # VOC2010: .25 * 2/3 + .25 * 2/3 + .25 * 3/5 = 29/60
    # VOC07: t = 0 .. .5 (6) -> 2/3, t = .6, .7 -> 3/5, t = .8 .. 1 -> 0: (4 + 6/5) / 11 = 26/55
    voc = voc_metrics(gt, dets)
    assert voc["per_class_voc10"]["cat"] == pytest.approx(29 / 60)
    assert voc["per_class_voc07"]["cat"] == pytest.approx(26 / 55)


def test_perfect_detections_score_one_everywhere() -> None:
    gt = make_gt([(1, 1, A, 0), (1, 2, B, 0), (2, 1, C, 0)], num_images=2)
    dets = [det(1, 1, A, 0.9), det(1, 2, B, 0.8), det(2, 1, C, 0.3)]
    voc = voc_metrics(gt, dets)
    coco = coco_metrics(gt, dets)
    assert voc["voc07_map"] == voc["voc10_map"] == 1.0
    assert coco["ap50"] == pytest.approx(1.0) and coco["map"] == pytest.approx(1.0)
    assert coco["per_class_ap"] == pytest.approx({"cat": 1.0, "dog": 1.0})


def test_detection_on_difficult_is_neither_tp_nor_fp() -> None:
    gt = make_gt([(1, 1, A, 0), (1, 1, B, 1)])
    dets = [det(1, 1, B, 0.95), det(1, 1, A, 0.9), det(1, 1, FAR, 0.5)]
    voc = voc_metrics(gt, dets)
    # the difficult hit is left out: TP, FP -> recall 1, 1; precision 1, 1/2 -> AP 1
    np.testing.assert_allclose(voc["pr_curves"]["cat"]["precision"], [1.0, 0.5])
    assert voc["per_class_voc10"]["cat"] == voc["per_class_voc07"]["cat"] == 1.0
    assert voc["num_gt"]["cat"] == 1 and voc["num_difficult"]["cat"] == 1
    # pycocotools ignores it too (iscrowd=1)
    assert coco_metrics(gt, dets)["per_class_ap50"]["cat"] == pytest.approx(1.0)


def test_difficult_gt_is_not_a_missed_positive() -> None:
    gt = make_gt([(1, 1, A, 0), (1, 1, B, 1)])
    voc = voc_metrics(gt, [det(1, 1, A, 0.9)])
    assert voc["per_class_voc10"]["cat"] == 1.0  # counted as a positive it would be 0.5


def test_best_match_is_taken_among_difficult_too() -> None:
    # the detection overlaps a difficult GT (IoU 0.81) more than a regular one (IoU 0.67):
    # the devkit takes the difficult one and ignores the detection; the regular GT stays missed
    gt = make_gt([(1, 1, (0, 0, 10, 10), 0), (1, 1, (2, 0, 12, 10), 1)])
    voc = voc_metrics(gt, [det(1, 1, (1.5, 0, 11.5, 10), 0.9)])
    assert voc["tp"]["cat"] == 0 and voc["pr_curves"]["cat"]["recall"].size == 0
    assert voc["per_class_voc10"]["cat"] == 0.0


def test_duplicate_on_matched_gt_is_fp() -> None:
    gt = make_gt([(1, 1, A, 0)])
    voc = voc_metrics(gt, [det(1, 1, A, 0.9), det(1, 1, (0, 0, 10, 9), 0.8)])
    np.testing.assert_allclose(voc["pr_curves"]["cat"]["precision"], [1.0, 0.5])
    assert voc["tp"]["cat"] == 1 and voc["per_class_voc10"]["cat"] == 1.0


def test_duplicate_does_not_fall_back_to_second_best_gt() -> None:
    # two overlapping GT; the second detection's best GT (IoU .905) is already matched, and the
    # devkit makes it a FP although its IoU with the other GT is .739; pycocotools matches it there
    gt = make_gt([(1, 1, (0, 0, 10, 10), 0), (1, 1, (2, 0, 12, 10), 0)])
    dets = [det(1, 1, (0, 0, 10, 10), 0.9), det(1, 1, (0.5, 0, 10.5, 10), 0.8)]
    voc = voc_metrics(gt, dets)
    assert voc["tp"]["cat"] == 1 and voc["per_class_voc10"]["cat"] == pytest.approx(0.5)
    assert coco_metrics(gt, dets)["per_class_ap50"]["cat"] == pytest.approx(1.0)


def test_iou_must_exceed_threshold_strictly() -> None:
    gt = make_gt([(1, 1, (0, 0, 10, 10), 0)])
    dets = [det(1, 1, (0, 0, 20, 10), 0.9)]  # IoU = 100 / 200 = 0.5 exactly
    assert voc_metrics(gt, dets)["per_class_voc10"]["cat"] == 0.0  # devkit: ovmax > 0.5
    assert coco_metrics(gt, dets)["per_class_ap50"]["cat"] == pytest.approx(1.0)  # COCO: >=


def test_detection_on_image_without_gt_is_fp() -> None:
    gt = make_gt([(1, 1, A, 0)], num_images=2)  # image 2 has no objects
    voc = voc_metrics(gt, [det(2, 1, A, 0.9), det(1, 1, A, 0.8)])
    # FP, TP: recall 0, 1; precision 0, 1/2 -> envelope 1/2 everywhere: AP 1/2 both ways
    assert voc["per_class_voc10"]["cat"] == pytest.approx(0.5)
    assert voc["per_class_voc07"]["cat"] == pytest.approx(0.5)


def test_class_without_detections_is_zero_and_class_without_gt_is_left_out() -> None:
    gt = make_gt([(1, 1, A, 0), (1, 2, B, 0)], classes=("cat", "dog", "cow"))
    voc = voc_metrics(gt, [det(1, 1, A, 0.9), det(1, 3, C, 0.9)])
    assert voc["per_class_voc10"]["dog"] == 0.0 and voc["per_class_voc07"]["dog"] == 0.0
    assert np.isnan(voc["per_class_voc10"]["cow"])  # no GT: AP undefined
    assert voc["voc10_map"] == pytest.approx(0.5)  # mean over cat (1) and dog (0) only
    coco = coco_metrics(gt, [det(1, 1, A, 0.9), det(1, 3, C, 0.9)])
    assert coco["per_class_ap50"]["dog"] == 0.0 and np.isnan(coco["per_class_ap50"]["cow"])
    assert coco["ap50"] == pytest.approx(0.5)


def test_voc07_recall_points_are_numpys_arange() -> None:
    # 10 GT, 3 found: recall reaches exactly 0.3, but the devkit's third point is
    # np.arange(0, 1.1, .1)[3] = 0.30000000000000004: only t = 0, .1, .2 count -> 3/11, not 4/11
    boxes = [(10 * i, 0, 10 * i + 8, 8) for i in range(10)]
    gt = make_gt([(1, 1, b, 0) for b in boxes])
    voc = voc_metrics(gt, [det(1, 1, b, 0.9 - 0.1 * i) for i, b in enumerate(boxes[:3])])
    assert voc["per_class_voc07"]["cat"] == pytest.approx(3 / 11)
    assert voc["per_class_voc10"]["cat"] == pytest.approx(0.3)


def test_no_detections_at_all() -> None:
    gt = make_gt([(1, 1, A, 0)])
    assert voc_metrics(gt, [])["voc10_map"] == 0.0
    coco = coco_metrics(gt, [])  # pycocotools' loadRes rejects an empty list: handled
    assert coco["map"] == 0.0 and coco["per_class_ap50"]["cat"] == 0.0


def test_inputs_are_not_modified_and_bad_ids_are_reported() -> None:
    gt = make_gt([(1, 1, A, 1), (1, 2, B, 0)])
    dets = [det(1, 1, A, 0.9), det(1, 2, B, 0.8)]
    gt_copy, dets_copy = copy.deepcopy(gt), copy.deepcopy(dets)
    coco_metrics(gt, dets)
    voc_metrics(gt, dets)
    assert gt == gt_copy and dets == dets_copy  # pycocotools would add ignore/area/id/segmentation
    with pytest.raises(ValueError, match="image ids"):
        voc_metrics(gt, [det(7, 1, A, 0.9)])
    with pytest.raises(ValueError, match="category ids"):
        coco_metrics(gt, [det(1, 9, A, 0.9)])


def devkit_iou(bb: tuple[int, ...], gt: tuple[int, ...]) -> float:
    """voc_eval.py's overlap, verbatim in substance: 1-based integer boxes, +1 on sides."""
    iw = max(min(gt[2], bb[2]) - max(gt[0], bb[0]) + 1.0, 0.0)
    ih = max(min(gt[3], bb[3]) - max(gt[1], bb[1]) + 1.0, 0.0)
    inter = iw * ih
    uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
           + (gt[2] - gt[0] + 1.0) * (gt[3] - gt[1] + 1.0) - inter)
    return inter / uni


def test_zero_based_iou_equals_devkit_iou_on_integer_voc_boxes() -> None:
    # VOC (1, 1, 10, 10) and (6, 6, 15, 15) cover 10x10 pixels each and share 5x5:
    # devkit: iw = min(10, 15) - max(1, 6) + 1 = 5 -> 25 / (100 + 100 - 25) = 1/7
    # ours: (0, 0, 10, 10) and (5, 5, 15, 15) -> 25 / 175
    assert devkit_iou((1, 1, 10, 10), (6, 6, 15, 15)) == pytest.approx(1 / 7)
    to_ours = np.array([-1, -1, 0, 0])  # (xmin - 1, ymin - 1, xmax, ymax), as preprocess converts
    ours = iou_xyxy(np.array([[1, 1, 10, 10]]) + to_ours, np.array([[6, 6, 15, 15]]) + to_ours)
    assert ours[0] == pytest.approx(1 / 7)
    # many integer pairs, touching and disjoint ones included
    rng = np.random.default_rng(0)
    lo = rng.integers(1, 40, (500, 2, 2))
    voc = np.concatenate((lo, lo + rng.integers(0, 25, (500, 2, 2))), axis=2)  # (xmin, ymin, xmax, ymax)
    expected = [devkit_iou(tuple(a), tuple(b)) for a, b in voc]
    np.testing.assert_allclose(iou_xyxy(voc[:, 0] + to_ours, voc[:, 1] + to_ours), expected,
                               rtol=1e-12)


# ------------------------------------------------------------------ randomised checks


def devkit_voc_eval(gt: dict, dets: list[dict], cat: int, thresh: float = 0.5
                    ) -> tuple[float, float]:
    """py-faster-rcnn's voc_eval loop transcribed (continuous IoU) -> (VOC07 AP, VOC2010 AP)."""
    recs: dict[int, dict] = {img["id"]: {"boxes": [], "difficult": []} for img in gt["images"]}
    for a in gt["annotations"]:
        if a["category_id"] == cat:
            x, y, w, h = a["bbox"]
            recs[a["image_id"]]["boxes"].append([x, y, x + w, y + h])
            recs[a["image_id"]]["difficult"].append(bool(a["difficult"]))
    for r in recs.values():
        r["boxes"] = np.array(r["boxes"]).reshape(-1, 4)
        r["det"] = [False] * len(r["difficult"])
    npos = sum(not d for r in recs.values() for d in r["difficult"])
    mine = [d for d in dets if d["category_id"] == cat]
    order = np.argsort([-d["score"] for d in mine], kind="stable")
    tp, fp = np.zeros(len(mine)), np.zeros(len(mine))
    for rank, i in enumerate(order):
        x, y, w, h = mine[i]["bbox"]
        r = recs[mine[i]["image_id"]]
        ovmax, jmax = -np.inf, -1
        if r["boxes"].size:
            bb = np.array([[x, y, x + w, y + h]] * len(r["boxes"]))
            overlaps = iou_xyxy(bb, r["boxes"])
            ovmax, jmax = overlaps.max(), int(overlaps.argmax())
        if ovmax > thresh:
            if not r["difficult"][jmax]:
                if not r["det"][jmax]:
                    tp[rank], r["det"][jmax] = 1, True
                else:
                    fp[rank] = 1
        else:
            fp[rank] = 1
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / max(npos, 1)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    ap07 = sum((np.max(prec[rec >= t]) if np.sum(rec >= t) else 0.0) / 11
               for t in np.arange(0.0, 1.1, 0.1))
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(ap07), float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def random_case(seed: int, num_images: int = 60, num_classes: int = 3, difficult_p: float = 0.1,
                disjoint: bool = False) -> tuple[dict, list[dict]]:
    """Random GT (overlapping, or one per cell of a 2x2 grid when `disjoint`) and noisy detections
    (jittered copies, duplicates, wrong classes, background boxes), scores without ties."""
    rng = np.random.default_rng(seed)
    objects, dets = [], []
    for img in range(1, num_images + 1):
        cells = rng.permutation(4)[: rng.integers(0, 5)]
        for cell in cells:
            w, h = rng.uniform(8, 40, 2)
            if disjoint:
                x, y = 50 * (cell % 2) + rng.uniform(0, 50 - w), 50 * (cell // 2) + rng.uniform(0, 50 - h)
            else:
                x, y = rng.uniform(0, 100 - w), rng.uniform(0, 100 - h)
            cat = int(rng.integers(1, num_classes + 1))
            objects.append((img, cat, (x, y, x + w, y + h), int(rng.random() < difficult_p)))
            for _ in range(rng.integers(0, 4)):
                j = rng.normal(0, 0.15, 4) * [w, h, w, h]
                c = cat if rng.random() < 0.8 else int(rng.integers(1, num_classes + 1))
                dets.append(det(img, c, (x + j[0], y + j[1], x + w + j[2], y + h + j[3]), rng.random()))
        for _ in range(rng.integers(0, 3)):
            x, y = rng.uniform(0, 80, 2)
            dets.append(det(img, int(rng.integers(1, num_classes + 1)), (x, y, x + 20, y + 20),
                            0.6 * rng.random()))
    return make_gt(objects, num_images, classes=tuple(f"c{k}" for k in range(num_classes))), dets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_matches_devkit_loop(seed: int) -> None:
    gt, dets = random_case(seed)
    voc = voc_metrics(gt, dets)
    for k, name in enumerate(voc["per_class_voc10"], start=1):
        ap07, ap10 = devkit_voc_eval(gt, dets, k)
        assert voc["per_class_voc07"][name] == pytest.approx(ap07, abs=1e-12)
        assert voc["per_class_voc10"][name] == pytest.approx(ap10, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_voc2010_ap_agrees_with_pycocotools_ap50_within_interpolation(seed: int) -> None:
    # No difficult objects and same-class GT never overlapping: then a detection has at most one
    # GT with IoU >= .5 (two such GT would each need more than half the detection's area), so both
    # libraries make the same matches (IoU == .5 exactly has probability 0) and only the
    # interpolation differs: the envelope f is non-increasing, so its 101-point mean S and its
    # integral A obey 0.01 * (S - f(0)) <= A - S <= 0.01 * (S - f(1)): |A - S| <= 0.01 per class.
    gt, dets = random_case(seed, num_images=80, difficult_p=0.0, disjoint=True)
    voc, coco = voc_metrics(gt, dets), coco_metrics(gt, dets)
    for name, ap in voc["per_class_voc10"].items():
        assert abs(ap - coco["per_class_ap50"][name]) <= 0.01 + 1e-9
    assert 0.2 < voc["voc10_map"] < 0.95  # a non-trivial curve, not two 1.0s


def test_map_agrees_with_pycocotools_with_difficult_and_overlaps() -> None:
    # With difficult (crowd) GT and overlapping objects the rules differ (intersection over the
    # detection's area for crowds; fallback to the second-best GT; >= vs >). Measured over seeds
    # 100-119 of this generator (~190 GT, ~320 detections each): mean |difference| 0.0055, max
    # 0.017, pycocotools almost always the higher (both rules turn devkit FPs into ignored or TP);
    # the 5 seeds here differ by 0.004 at most. 0.02 is above the worst of the 20 (0.017): an
    # empirical bound for this generator, unlike the proven 0.01 of the test above.
    for seed in range(5):
        gt, dets = random_case(100 + seed, num_images=80, difficult_p=0.1)
        assert voc_metrics(gt, dets)["voc10_map"] == pytest.approx(
            coco_metrics(gt, dets)["ap50"], abs=0.02)

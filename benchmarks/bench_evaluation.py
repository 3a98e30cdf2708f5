"""Evaluation time: `voc_metrics` (ours, numpy) vs `coco_metrics` (pycocotools) on a VOC-sized set.

    python benchmarks/bench_evaluation.py [--images 5000] [--repeats 3] [--seed 0]

The synthetic set has VOC07-test proportions: 5000 images, ~3 GT boxes per image (5 % difficult),
20 classes, ~10 detections per image (noisy copies of the GT, some with the wrong class, plus
background false positives). Each function gets the same inputs; the best of `--repeats` runs is
printed, with the ratio. The two compute different things (pycocotools: 10 IoU thresholds,
4 area ranges, 3 maxDets; ours: one IoU threshold, two interpolations), so the ratio says what the
evaluate stage costs with each, not which algorithm is faster per unit of work.

`eval_time_records` is the `eval_time` figure of `frcnn bench` on the same synthetic set:
`voc_metrics` vs pycocotools alone (`pycocotools_eval`), each on its own deep copies.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # run as `python benchmarks/bench_evaluation.py`: the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import alternate, ratio_record  # noqa: E402
from frcnn.evaluation.coco import coco_metrics  # noqa: E402
from frcnn.evaluation.voc import voc_metrics  # noqa: E402


def synthetic_eval_set(num_images: int = 5000, num_classes: int = 20, seed: int = 0
                       ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A COCO GT dict and COCO results for it: (gt, detections)."""
    rng = np.random.default_rng(seed)
    width, height = 500, 375
    per_image = np.maximum(rng.poisson(3.0, num_images), 1)
    n = int(per_image.sum())
    img = np.repeat(np.arange(1, num_images + 1), per_image)
    wh = rng.uniform([20, 20], [300, 250], (n, 2))
    xy = rng.uniform(0, 1, (n, 2)) * ([width, height] - wh)
    cls = rng.integers(1, num_classes + 1, n)
    difficult = rng.random(n) < 0.05
    gt = {"images": [{"id": i, "file_name": f"{i:06d}.jpg", "width": width, "height": height}
                     for i in range(1, num_images + 1)],
          "annotations": [{"id": j + 1, "image_id": int(img[j]), "category_id": int(cls[j]),
                           "bbox": [*map(float, xy[j]), *map(float, wh[j])],
                           "area": float(wh[j, 0] * wh[j, 1]), "iscrowd": int(difficult[j]),
                           "difficult": int(difficult[j]), "truncated": 0} for j in range(n)],
          "categories": [{"id": c, "name": f"class{c}"} for c in range(1, num_classes + 1)]}

    copies = rng.integers(1, 4, n)  # 1-3 detections near each object
    src = np.repeat(np.arange(n), copies)
    jitter = rng.normal(0, 0.12, (src.size, 4)) * np.tile(wh[src], 2)
    d_xy = xy[src] + jitter[:, :2]
    d_wh = np.maximum(wh[src] + jitter[:, 2:], 2)
    d_cls = np.where(rng.random(src.size) < 0.85, cls[src], rng.integers(1, num_classes + 1, src.size))
    d_img = img[src]
    n_bg = num_images * 3  # background false positives, lower scores
    bg_wh = rng.uniform(10, 200, (n_bg, 2))
    d_xy = np.concatenate((d_xy, rng.uniform(0, 1, (n_bg, 2)) * ([width, height] - bg_wh)))
    d_wh = np.concatenate((d_wh, bg_wh))
    d_cls = np.concatenate((d_cls, rng.integers(1, num_classes + 1, n_bg)))
    d_img = np.concatenate((d_img, rng.integers(1, num_images + 1, n_bg)))
    scores = np.concatenate((rng.random(src.size), 0.5 * rng.random(n_bg)))
    dets = [{"image_id": int(d_img[j]), "category_id": int(d_cls[j]),
             "bbox": [*map(float, d_xy[j]), *map(float, d_wh[j])], "score": float(scores[j])}
            for j in range(scores.size)]
    return gt, dets


def pycocotools_eval(gt: dict[str, Any], results: list[dict[str, Any]]) -> float:
    """pycocotools alone: index GT, load results, evaluate, accumulate, summarise -> mAP."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        dt = coco.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def eval_time_records(num_images: int, repeats: int = 1) -> list[dict[str, Any]]:
    """The `eval_time` figure: `voc_metrics` vs `pycocotools_eval`, alternately, on one set."""
    gt, results = synthetic_eval_set(num_images)
    times = alternate({"ours": lambda: voc_metrics(copy.deepcopy(gt), copy.deepcopy(results)),
                       "tv": lambda: pycocotools_eval(gt, results)}, warmup=0, repeats=repeats)
    return [ratio_record("eval_time", f"{num_images} images", times["ours"], times["tv"],
                         peer="pycocotools", gt_boxes=len(gt["annotations"]),
                         detections=len(results),
                         note="ours: frcnn.evaluation.voc_metrics (VOC07 11-point + VOC10 AP50); "
                              "pycocotools: COCOeval bbox (10 IoUs, 4 areas), loading included; "
                              "both timed on their own deep copies")]


def best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    gt, dets = synthetic_eval_set(args.images, seed=args.seed)
    print(f"{args.images} images, {len(gt['annotations'])} GT boxes "
          f"({sum(a['difficult'] for a in gt['annotations'])} difficult), "
          f"{len(gt['categories'])} classes, {len(dets)} detections")
    t_voc, voc = best_time(lambda: voc_metrics(gt, dets), args.repeats)
    t_coco, coco = best_time(lambda: coco_metrics(gt, dets), args.repeats)
    print(f"voc_metrics  (ours, VOC07 + VOC2010 AP50): {t_voc:7.3f} s   "
          f"VOC07 {voc['voc07_map']:.4f}  VOC2010 {voc['voc10_map']:.4f}")
    print(f"coco_metrics (pycocotools COCOeval bbox):  {t_coco:7.3f} s   "
          f"AP50 {coco['ap50']:.4f}  AP {coco['map']:.4f}")
    print(f"ratio pycocotools / ours: {t_coco / t_voc:.1f}x (best of {args.repeats})")


if __name__ == "__main__":
    main()

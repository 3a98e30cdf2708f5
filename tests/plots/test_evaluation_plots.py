"""Evaluation reports: per-class CSV values, PR table sampling, valid PNGs, atomic writes."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest

from frcnn.evaluation.coco import coco_metrics
from frcnn.evaluation.tables import pr_curves_table, write_per_class_csv
from frcnn.evaluation.voc import voc_metrics
from frcnn.fileio import atomic_savefig, atomic_write_text
from frcnn.plots.evaluation import plot_detection_grid, plot_pr_curves

NAMES = ["cat", "dog", "cow"]


def small_case() -> tuple[dict, list[dict]]:
    """cat: 2 GT, detections TP, FP, TP; dog: 1 GT + 1 difficult, no detections; cow: no GT."""
    def ann(i, cat, x, diff=0):
        return {"id": i, "image_id": 1, "category_id": cat, "bbox": [x, 0, 10, 10], "area": 100,
                "iscrowd": diff, "difficult": diff}

    gt = {"images": [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 100}],
          "annotations": [ann(1, 1, 0), ann(2, 1, 50), ann(3, 2, 20), ann(4, 2, 80, diff=1)],
          "categories": [{"id": k + 1, "name": n} for k, n in enumerate(NAMES)]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [30, 60, 10, 10], "score": 0.8},
            {"image_id": 1, "category_id": 1, "bbox": [50, 0, 10, 10], "score": 0.7}]
    return gt, dets


def assert_valid_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    assert image.std() > 0  # something was drawn
    assert not list(path.parent.glob("*.tmp"))


def test_per_class_csv_rows_and_values(tmp_path: Path) -> None:
    gt, dets = small_case()
    path = tmp_path / "reports" / "per_class_ap.csv"
    write_per_class_csv(path, coco_metrics(gt, dets), voc_metrics(gt, dets), NAMES)
    rows = list(csv.DictReader(path.read_text().splitlines()))
    assert [r["class"] for r in rows] == NAMES
    # cat: COCO 101-point (51 + 100/3) / 101 = .8350 at every IoU (exact boxes); VOC07 28/33,
    # VOC2010 5/6 (see test_evaluation.test_tp_fp_tp_exact_ap)
    assert rows[0] == {"class": "cat", "ap50_coco": "0.8350", "ap_coco": "0.8350",
                       "voc07_ap50": "0.8485", "voc10_ap50": "0.8333", "num_gt": "2",
                       "num_difficult": "0"}
    assert rows[1] == {"class": "dog", "ap50_coco": "0.0000", "ap_coco": "0.0000",
                       "voc07_ap50": "0.0000", "voc10_ap50": "0.0000", "num_gt": "1",
                       "num_difficult": "1"}
    assert rows[2]["voc10_ap50"] == "nan" and rows[2]["ap50_coco"] == "nan"
    assert rows[2]["num_gt"] == "0"
    assert not list(path.parent.glob("*.tmp"))


def test_pr_curves_table_downsamples_long_curves() -> None:
    n = 500
    recall = np.linspace(0.002, 1.0, n)
    precision = np.linspace(1.0, 0.3, n)
    voc = {"pr_curves": {"cat": {"recall": recall, "precision": precision},
                         "dog": {"recall": np.array([0.5, 1.0]), "precision": np.array([1.0, 0.5])},
                         "cow": {"recall": np.array([]), "precision": np.array([])}}}
    rows = pr_curves_table(voc, NAMES)
    cat = [r for r in rows if r["class"] == "cat"]
    assert len(cat) == 101
    assert cat[0] == {"class": "cat", "recall": 0.002, "precision": 1.0}  # ends kept
    assert cat[-1] == {"class": "cat", "recall": 1.0, "precision": 0.3}
    assert all(a["recall"] < b["recall"] for a, b in zip(cat, cat[1:]))  # in rank order
    assert [r for r in rows if r["class"] == "dog"] == [
        {"class": "dog", "recall": 0.5, "precision": 1.0},
        {"class": "dog", "recall": 1.0, "precision": 0.5}]  # short curves unchanged
    assert not [r for r in rows if r["class"] == "cow"]  # no detections, no rows


def test_pr_curve_png(tmp_path: Path) -> None:
    gt, dets = small_case()
    path = tmp_path / "pr_curves.png"
    open_before = len(plt.get_fignums())
    plot_pr_curves(voc_metrics(gt, dets), NAMES, path)
    assert_valid_png(path)
    assert len(plt.get_fignums()) == open_before  # closed: repeated evaluations must not leak


def test_detection_grid_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 80, 3), dtype=np.uint8) for _ in range(5)]
    preds = [{"boxes": np.array([[5.0, 5, 30, 40], [10, 10, 20, 20]]), "labels": np.array([1, 3]),
              "scores": np.array([0.9, 0.2])} for _ in images]
    gts = [{"boxes": np.array([[4.0, 6, 31, 38]]), "labels": np.array([1])} for _ in images]
    path = tmp_path / "detections.png"
    plot_detection_grid(images, preds, gts, NAMES, path)
    assert_valid_png(path)
    empty = tmp_path / "empty.png"
    plot_detection_grid([], [], [], NAMES, empty)  # num_preview: 0 must not crash the stage
    assert_valid_png(empty)


def test_atomic_write_keeps_old_file_when_rename_fails(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "metrics.json"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        atomic_write_text(path, "half")
    fig = plt.figure()
    with pytest.raises(OSError):
        atomic_savefig(fig, tmp_path / "plot.png")
    plt.close(fig)
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no .tmp left

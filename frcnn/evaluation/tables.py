"""Tables of evaluation results: reports/per_class_ap.csv and the rows of reports/pr_curves.csv."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from frcnn.fileio import atomic_write_text


def format_ap(value: float) -> str:
    """An AP with 4 decimals, "nan" for a class without GT."""
    return "nan" if value is None or math.isnan(value) else f"{value:.4f}"



def write_per_class_csv(path: str | Path, coco: dict[str, Any], voc: dict[str, Any],
                        class_names: Sequence[str]) -> None:
    """One row per class: class, ap50_coco (101-point), ap_coco (AP@[.5:.95]), voc07_ap50
    (11-point), voc10_ap50 (all-point), num_gt (non-difficult), num_difficult. NaN: no GT."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["class", "ap50_coco", "ap_coco", "voc07_ap50", "voc10_ap50", "num_gt",
                     "num_difficult"])
    for name in class_names:
        writer.writerow([name, format_ap(coco["per_class_ap50"][name]), format_ap(coco["per_class_ap"][name]),
                         format_ap(voc["per_class_voc07"][name]), format_ap(voc["per_class_voc10"][name]),
                         voc["num_gt"][name], voc["num_difficult"][name]])
    atomic_write_text(path, buf.getvalue())



def pr_curves_table(voc_result: dict[str, Any], class_names: Sequence[str],
                    max_points: int = 101) -> list[dict[str, Any]]:
    """Rows {class, recall, precision} for a DVC plots CSV, at most `max_points` per class.

    A curve longer than that is sampled evenly in detection rank (first and last point kept),
    which keeps its shape; a class without detections has no rows.
    """
    rows: list[dict[str, Any]] = []
    for name in class_names:
        curve = voc_result["pr_curves"][name]
        n = curve["recall"].size
        idx = np.unique(np.round(np.linspace(0, n - 1, min(n, max_points))).astype(np.int64))
        rows += [{"class": name, "recall": round(float(r), 4), "precision": round(float(p), 4)}
                 for r, p in zip(curve["recall"][idx], curve["precision"][idx])]
    return rows

"""Evaluation outputs: the per-class AP table, PR curves (PNG and DVC plot rows), a detection grid.

Every file is written under a temporary name beside its target and renamed into place
(`atomic_write_text`, `atomic_savefig`), so an interrupted stage never leaves a half-written
report for DVC to cache. `voc` arguments are `frcnn.evaluation.voc_metrics` results, `coco`
arguments `frcnn.evaluation.coco_metrics` results.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: figures go to files

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from frcnn.data.io import atomic_write_bytes
from frcnn.visualize import class_color, draw_boxes, show_image  # noqa: E402

__all__ = ["atomic_write_text", "atomic_savefig", "write_per_class_csv", "plot_pr_curves",
           "pr_curves_table", "plot_detection_grid"]

# GT boxes: black dashes over a white line, unlike any class colour and visible on any image
GT_UNDERLAY, GT_COLOR = "white", "black"


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path`, parents created, via a temp file and an atomic rename."""
    atomic_write_bytes(Path(path), text.encode("utf-8"))


def atomic_savefig(fig: Figure, path: str | Path, **savefig_kwargs: Any) -> None:
    """`fig.savefig(path)` atomically; the format is `path`'s suffix.

    The figure stays open (the caller owns it); `savefig_kwargs` go to matplotlib (dpi, ...).
    """
    path = Path(path)
    buf = io.BytesIO()
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    fig.savefig(buf, **savefig_kwargs)
    atomic_write_bytes(path, buf.getvalue())


def _fmt(value: float) -> str:
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
        writer.writerow([name, _fmt(coco["per_class_ap50"][name]), _fmt(coco["per_class_ap"][name]),
                         _fmt(voc["per_class_voc07"][name]), _fmt(voc["per_class_voc10"][name]),
                         voc["num_gt"][name], voc["num_difficult"][name]])
    atomic_write_text(path, buf.getvalue())


def plot_pr_curves(voc_result: dict[str, Any], class_names: Sequence[str], path: str | Path) -> None:
    """PR curve per class (IoU > voc_result's threshold), legend with VOC2010 and VOC07 AP -> PNG."""
    fig, ax = plt.subplots(figsize=(9, 6))
    for k, name in enumerate(class_names):
        curve = voc_result["pr_curves"][name]
        ap10, ap07 = voc_result["per_class_voc10"][name], voc_result["per_class_voc07"][name]
        label = f"{name} ({_fmt(ap10)} / {_fmt(ap07)})"
        # start at recall 0 with the first precision so a one-detection curve still shows
        recall = np.concatenate((curve["recall"][:1] * 0, curve["recall"]))
        precision = np.concatenate((curve["precision"][:1], curve["precision"]))
        ax.plot(recall, precision, color=class_color(k + 1), linewidth=1.2, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"PR curves at IoU > {voc_result['iou_thresh']:g} (VOC rules); "
                 f"mAP VOC2010 {_fmt(voc_result['voc10_map'])}, VOC07 {_fmt(voc_result['voc07_map'])}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(title="class (AP VOC2010 / VOC07)", fontsize=7, title_fontsize=7,
              loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    try:
        atomic_savefig(fig, path, dpi=100)
    finally:
        plt.close(fig)


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


def plot_detection_grid(images: Sequence[np.ndarray], predictions: Sequence[dict[str, np.ndarray]],
                        ground_truths: Sequence[dict[str, np.ndarray]], class_names: Sequence[str],
                        path: str | Path, score_thresh: float = 0.5, cols: int = 4) -> None:
    """A grid of images (H, W, 3) uint8 with GT boxes (dashed black on white) and predictions scoring
    >= `score_thresh` (solid, coloured by class, with name and score) -> PNG.

    predictions: {boxes (N, 4) xyxy, labels (N,), scores (N,)}; ground_truths: {boxes, labels}.
    """
    n = len(images)
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no images", ha="center", va="center")
    for ax, image, pred, gt in zip(axes.flat, images, predictions, ground_truths):
        keep = np.asarray(pred["scores"]) >= score_thresh
        show_image(ax, image, title=f"{int(keep.sum())} detections, {len(gt['labels'])} GT")
        draw_boxes(ax, gt["boxes"], color=GT_UNDERLAY, linewidth=1.6, show_text=False)
        draw_boxes(ax, gt["boxes"], color=GT_COLOR, linestyle="--", linewidth=1.0, show_text=False)
        draw_boxes(ax, np.asarray(pred["boxes"])[keep], labels=np.asarray(pred["labels"])[keep],
                   class_names=class_names, scores=np.asarray(pred["scores"])[keep])
    fig.suptitle(f"predictions (score >= {score_thresh:g}, solid) and ground truth (dashed)",
                 fontsize=9)
    fig.tight_layout()
    try:
        atomic_savefig(fig, path, dpi=100)
    finally:
        plt.close(fig)

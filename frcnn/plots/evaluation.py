"""Evaluation figures: PR curves per class and a grid of detections beside the GT.

Written atomically (`frcnn.fileio.atomic_savefig`), so an interrupted stage never leaves a
half-written figure for DVC to cache. `voc` arguments are `frcnn.evaluation.voc.voc_metrics`
results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from frcnn.evaluation.tables import format_ap
from frcnn.fileio import atomic_savefig
from frcnn.plots.draw import class_color, draw_boxes, plt, show_image

__all__ = ["plot_pr_curves", "plot_detection_grid"]

# GT boxes: black dashes over a white line, unlike any class colour and visible on any image
GT_UNDERLAY, GT_COLOR = "white", "black"


def plot_pr_curves(voc_result: dict[str, Any], class_names: Sequence[str], path: str | Path) -> None:
    """PR curve per class (IoU > voc_result's threshold), legend with VOC2010 and VOC07 AP -> PNG."""
    fig, ax = plt.subplots(figsize=(9, 6))
    for k, name in enumerate(class_names):
        curve = voc_result["pr_curves"][name]
        ap10, ap07 = voc_result["per_class_voc10"][name], voc_result["per_class_voc07"][name]
        label = f"{name} ({format_ap(ap10)} / {format_ap(ap07)})"
        # start at recall 0 with the first precision so a one-detection curve still shows
        recall = np.concatenate((curve["recall"][:1] * 0, curve["recall"]))
        precision = np.concatenate((curve["precision"][:1], curve["precision"]))
        ax.plot(recall, precision, color=class_color(k + 1), linewidth=1.2, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"PR curves at IoU > {voc_result['iou_thresh']:g} (VOC rules); "
                 f"mAP VOC2010 {format_ap(voc_result['voc10_map'])}, VOC07 {format_ap(voc_result['voc07_map'])}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(title="class (AP VOC2010 / VOC07)", fontsize=7, title_fontsize=7,
              loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    try:
        atomic_savefig(fig, path, dpi=100)
    finally:
        plt.close(fig)


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


def plot_errors(tide: dict[str, Any], path: str | Path) -> None:
    """The TIDE breakdown as bars: AP50 an oracle fixing each error type alone would add, with the
    count of errors of that type on each bar."""
    from frcnn.evaluation.errors import ERROR_TYPES

    deltas = [tide["delta_ap50"][t] for t in ERROR_TYPES]
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    bars = ax.bar(ERROR_TYPES, deltas, color=[class_color(i) for i in range(len(ERROR_TYPES))])
    for bar, kind in zip(bars, ERROR_TYPES):
        ax.annotate(str(tide["counts"][kind]), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_ylabel("ΔAP50 if fixed (VOC all-point)")
    ax.set_title(f"Where the AP50 goes (TIDE): AP50 {tide['ap50']:.3f}, {tide['num_tp']} TP of "
                 f"{tide['num_gt']} GT; bar labels: number of errors", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, close=True)

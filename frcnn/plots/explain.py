"""One figure per stage of an image's journey through the detector (a `Trace`), counts in the
titles, and an index page. Boxes are drawn on the input image (the trace's resized-pixel boxes
mapped back); every figure is written atomically.

1_anchors        the anchors of the centre feature cell, and the grid of anchor centres
2_anchor_labels  each anchor's training label for the GT: positive / negative / ignored, and the
                 positives only the best-anchor-per-GT rule made ("rescued")
3_objectness     the RPN's objectness (sigmoid) per anchor shape, as heat maps over the image
4_proposals      the top proposals before NMS, and what NMS kept, with their recall of the GT
5_sampled_rois   the RoIs sampled for the second stage: foreground and background
6_detections     the final detections with scores, beside the GT
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frcnn.analysis.explain import rescued_positives, summarize
from frcnn.analysis.trace import Trace
from frcnn.fileio import atomic_savefig, atomic_write_text
from frcnn.plots.draw import draw_boxes, plt, show_image

DRAWN_PRE_NMS, DRAWN_PROPOSALS, DRAWN_NEGATIVES = 100, 50, 60
FIGURES = ("1_anchors.png", "2_anchor_labels.png", "3_objectness.png", "4_proposals.png",
           "5_sampled_rois.png", "6_detections.png")
POS, NEG, IGN, RESCUED, GT = "#2ca02c", "#1f77b4", "#bbbbbb", "#ff7f0e", "yellow"


def _np(boxes: torch.Tensor, tr: Trace) -> np.ndarray:
    return tr.to_input(boxes.float()).numpy()


def _gt(ax: Any, tr: Trace) -> None:
    if tr.training is not None:
        draw_boxes(ax, _np(tr.training.gt_boxes, tr), color=GT, linewidth=2.0, show_text=False)


def _shape_names(scales: Sequence[float], ratios: Sequence[float]) -> list[str]:
    # base_anchors is ratio-major: [(r0, s0), (r0, s1), ..., (r1, s0), ...]
    return [f"{s:g}px h/w {r:g}" for r in ratios for s in scales]


def figure_anchors(tr: Trace, image: np.ndarray, path: Path) -> None:
    h, w = tr.settings["feature_hw"]
    a = tr.num_anchor_shapes
    centre = ((h // 2) * w + w // 2) * a
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    show_image(left, image, f"the {a} anchors of feature cell ({h // 2}, {w // 2}) "
                            f"(stride {tr.stride} px of the resized image)")
    draw_boxes(left, _np(tr.anchors[centre: centre + a], tr), color=RESCUED, show_text=False)
    left.set_xlim(-0.25 * image.shape[1], 1.25 * image.shape[1])
    left.set_ylim(1.25 * image.shape[0], -0.25 * image.shape[0])
    show_image(right, image, f"{h}x{w} cells x {a} shapes = {tr.anchors.shape[0]} anchors")
    centres = tr.to_input(tr.anchors[::a].float())
    right.scatter(((centres[:, 0] + centres[:, 2]) / 2).numpy(),
                  ((centres[:, 1] + centres[:, 3]) / 2).numpy(), s=4, c="red")
    atomic_savefig(fig, path, close=True, dpi=110, bbox_inches="tight")


def figure_anchor_labels(tr: Trace, image: np.ndarray, path: Path, seed: int = 0) -> None:
    view, counts = tr.training, summarize(tr)
    assert view is not None
    rescued = rescued_positives(tr)
    pos = torch.where(view.anchor_labels == 1)[0]
    plain = pos[~torch.isin(pos, rescued)]
    neg = torch.where(view.anchor_labels == 0)[0]
    g = torch.Generator().manual_seed(seed)
    shown_neg = neg[torch.randperm(neg.numel(), generator=g)[:DRAWN_NEGATIVES]]
    fig, ax = plt.subplots(figsize=(7, 6))
    show_image(ax, image, f"anchor labels: {counts['anchor_positive']} positive "
                          f"({counts['anchor_rescued']} rescued as a GT's best anchor), "
                          f"{counts['anchor_negative']} negative, {counts['anchor_ignored']} ignored\n"
                          f"IoU >= {tr.settings['pos_iou_thresh']:g} positive, "
                          f"< {tr.settings['neg_iou_thresh']:g} negative; sampled for the loss: "
                          f"{counts['rpn_sampled_positive']} + {counts['rpn_sampled_negative']}; "
                          f"{len(shown_neg)} negatives drawn")
    draw_boxes(ax, _np(tr.anchors[shown_neg], tr), color=NEG, linewidth=0.6, show_text=False)
    draw_boxes(ax, _np(tr.anchors[plain], tr), color=POS, linewidth=1.4, show_text=False)
    draw_boxes(ax, _np(tr.anchors[rescued], tr), color=RESCUED, linewidth=1.4, linestyle="--",
               show_text=False)
    _gt(ax, tr)
    _legend(ax, [(GT, "GT"), (POS, "positive"), (RESCUED, "rescued positive"), (NEG, "negative")])
    atomic_savefig(fig, path, close=True, dpi=110, bbox_inches="tight")


def figure_objectness(tr: Trace, image: np.ndarray, path: Path, shape_names: Sequence[str]) -> None:
    a = tr.num_anchor_shapes
    cols = min(a, 3)
    rows = math.ceil(a / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows), squeeze=False)
    prob = torch.sigmoid(tr.objectness)  # (A, H, W)
    extent = (0, image.shape[1], image.shape[0], 0)
    # each heat-map cell covers stride x stride resized pixels: its exact place on the input
    h_img, w_img = tr.image_size
    rows, cols_ = math.ceil(h_img / tr.stride), math.ceil(w_img / tr.stride)
    sx, sy = tr.scale
    cells_extent = (0, cols_ * tr.stride * sx, rows * tr.stride * sy, 0)
    for k, ax in enumerate(axes.flat):
        if k >= a:
            ax.set_axis_off()
            continue
        ax.imshow(image, extent=extent)
        # the feature map covers the padded batch: the resized image's cells, cropped to it
        cells = prob[k, :rows, :cols_]
        ax.imshow(cells.numpy(), cmap="inferno", alpha=0.55, vmin=0, vmax=1,
                  extent=cells_extent, interpolation="nearest")
        ax.set_xlim(0, image.shape[1])
        ax.set_ylim(image.shape[0], 0)
        ax.set_axis_off()
        ax.set_title(f"{shape_names[k]}: max {float(cells.max()):.2f}", fontsize=7)
    fig.suptitle(f"objectness per anchor shape ({a} shapes, {prob[0].numel()} cells each)",
                 fontsize=8)
    atomic_savefig(fig, path, close=True, dpi=110, bbox_inches="tight")


def figure_proposals(tr: Trace, image: np.ndarray, path: Path) -> None:
    counts = tr.settings
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5))
    show_image(left, image, f"before NMS: the top {min(DRAWN_PRE_NMS, tr.pre_nms_boxes.shape[0])} "
                            f"of {tr.pre_nms_boxes.shape[0]} (the top "
                            f"{min(counts['pre_nms_top_n'], tr.anchors.shape[0])} anchors by "
                            "objectness, decoded, clipped, tiny ones dropped)")
    order = tr.pre_nms_scores.argsort(descending=True)[:DRAWN_PRE_NMS]
    draw_boxes(left, _np(tr.pre_nms_boxes[order], tr), color=NEG, linewidth=0.6, show_text=False)
    title = (f"after NMS at {counts['rpn_nms_thresh']:g}: {tr.nms_keep.numel()} kept, "
             f"{tr.proposals.shape[0]} to the second stage, the top "
             f"{min(DRAWN_PROPOSALS, tr.proposals.shape[0])} drawn")
    if tr.training is not None:
        s = summarize(tr)
        title += (f"\nrecall of the {s['gt']} GT: {s['proposal_recall@0.5']:.2f} at IoU 0.5, "
                  f"{s['proposal_recall@0.7']:.2f} at 0.7")
    show_image(right, image, title)
    draw_boxes(right, _np(tr.proposals[:DRAWN_PROPOSALS], tr), color=POS, linewidth=0.7,
               show_text=False)
    _gt(left, tr)
    _gt(right, tr)
    atomic_savefig(fig, path, close=True, dpi=110, bbox_inches="tight")


def figure_sampled_rois(tr: Trace, image: np.ndarray, path: Path) -> None:
    view = tr.training
    assert view is not None
    fg, bg = view.roi_labels > 0, view.roi_labels == 0
    fig, ax = plt.subplots(figsize=(7, 6))
    show_image(ax, image, f"RoIs sampled for the second stage: {int(fg.sum())} foreground "
                          f"(IoU >= {tr.settings['roi_fg_iou_thresh']:g}), {int(bg.sum())} "
                          "background\n(training-mode proposals, GT appended, as the loss sees them)")
    draw_boxes(ax, _np(view.roi_boxes[bg], tr), color=NEG, linewidth=0.6, show_text=False)
    draw_boxes(ax, _np(view.roi_boxes[fg], tr), color=POS, linewidth=1.2, show_text=False)
    _gt(ax, tr)
    _legend(ax, [(GT, "GT"), (POS, "foreground"), (NEG, "background")])
    atomic_savefig(fig, path, close=True, dpi=110, bbox_inches="tight")


def figure_detections(tr: Trace, image: np.ndarray, path: Path, class_names: Sequence[str],
                      conf: float) -> None:
    det = tr.detections
    keep = det["scores"] >= conf
    cols = 2 if tr.training is not None else 1
    fig, axes = plt.subplots(1, cols, figsize=(5.5 * cols, 5), squeeze=False)
    show_image(axes[0, 0], image, f"{int(keep.sum())} detections with score >= {conf:g} "
                                  f"(of {det['boxes'].shape[0]} returned)")
    draw_boxes(axes[0, 0], det["boxes"][keep].numpy(), det["labels"][keep].tolist(), class_names,
               scores=det["scores"][keep].tolist())
    if tr.training is not None:
        view = tr.training
        show_image(axes[0, 1], image, f"GT: {view.gt_boxes.shape[0]} objects")
        draw_boxes(axes[0, 1], _np(view.gt_boxes, tr), view.gt_labels.tolist(), class_names)
    atomic_savefig(fig, path, close=True, dpi=110, bbox_inches="tight")


def _legend(ax: Any, entries: Sequence[tuple[str, str]]) -> None:
    from matplotlib.lines import Line2D

    ax.legend(handles=[Line2D([], [], color=c, label=t) for c, t in entries], fontsize=6,
              loc="lower right", framealpha=0.8)


def write_explain(tr: Trace, image: np.ndarray, out: Path, class_names: Sequence[str],
                  shape_names: Sequence[str], title: str, conf: float = 0.5) -> dict[str, Any]:
    """All figures and `index.md` (a counts table and the figures) into `out`; returns the counts.
    `image`: the input image (H, W, 3) uint8."""
    out.mkdir(parents=True, exist_ok=True)
    figures = [("1_anchors.png", "Anchors", lambda p: figure_anchors(tr, image, p)),
               ("3_objectness.png", "Objectness per anchor shape",
                lambda p: figure_objectness(tr, image, p, shape_names)),
               ("4_proposals.png", "Proposals before and after NMS",
                lambda p: figure_proposals(tr, image, p)),
               ("6_detections.png", "Detections", lambda p: figure_detections(tr, image, p,
                                                                              class_names, conf))]
    if tr.training is not None:
        figures += [("2_anchor_labels.png", "Anchor labels for the GT",
                     lambda p: figure_anchor_labels(tr, image, p)),
                    ("5_sampled_rois.png", "RoIs sampled for the second stage",
                     lambda p: figure_sampled_rois(tr, image, p))]
    figures.sort()
    for name, _, draw in figures:
        draw(out / name)
    counts = summarize(tr)
    lines = [f"# {title}", "", "| stage | count |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |"
              for k, v in counts.items()]
    for name, heading, _ in figures:
        lines += ["", f"## {heading}", "", f"![{heading}]({name})"]
    atomic_write_text(out / "index.md", "\n".join(lines) + "\n")
    return counts


__all__ = ["FIGURES", "write_explain"]

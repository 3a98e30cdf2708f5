"""Drawing boxes on images with matplotlib (Agg): previews, detections, anchors.

Boxes are (N, 4) xyxy in the pixels of the image drawn, our one coordinate convention.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: figures go to PNG files, never to a screen

import matplotlib.pyplot as plt  # noqa: E402, F401  (the one pyplot import, after the backend is set)
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
           "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324", "#800000", "#aaffc3",
           "#808000", "#ffd8b1", "#000075", "#a9a9a9", "#ffe119", "#000000"]


def class_color(label: int) -> str:
    return PALETTE[int(label) % len(PALETTE)]


def draw_boxes(
    ax: Axes,
    boxes: np.ndarray | Sequence[Sequence[float]],
    labels: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    scores: Sequence[float] | None = None,
    color: str | None = None,
    linestyle: str = "-",
    linewidth: float = 1.5,
    show_text: bool = True,
) -> None:
    """Draw xyxy `boxes` (N, 4) on `ax`; `labels` are 1-based class ids into `class_names`.

    `color=None` colours each box by its class; pass a colour to draw e.g. all GT boxes alike.
    """
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        label = int(labels[i]) if labels is not None else 0
        c = color or class_color(label)
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=c,
                               linewidth=linewidth, linestyle=linestyle))
        if not show_text or labels is None:
            continue
        name = class_names[label - 1] if class_names and 0 < label <= len(class_names) else str(label)
        text = f"{name} {float(scores[i]):.2f}" if scores is not None else name
        ax.text(x1, y1, text, fontsize=6, color="white", va="bottom",
                bbox=dict(facecolor=c, alpha=0.7, pad=1, edgecolor="none"))


def show_image(ax: Axes, image: np.ndarray, title: str | None = None) -> None:
    """Show an (H, W, 3) uint8 or float [0, 1] image without axes ticks."""
    ax.imshow(image)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=7)

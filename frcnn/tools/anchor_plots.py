"""Figures for `frcnn anchors show` and `frcnn anchors analyze` (the reference design's debugging figure)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from frcnn.config import Config
from frcnn.data.image_io import load_rgb
from frcnn.fileio import atomic_savefig
from frcnn.model.backbone import backbone_stride
from frcnn.ops.anchors import anchor_scales_px, base_anchors, grid_anchors
from frcnn.plots.draw import draw_boxes, show_image
from frcnn.tools.anchor_analysis import resized_gt


def plot_anchors(cfg: Config, gt: dict, image_root: Path, index: int, path: Path) -> None:
    """Image `index` of a COCO GT dict, resized as the model sees it, with its GT boxes (red) and
    all k anchors of the feature cells at the GT centres (and the image centre) in blue."""
    img_info = gt["images"][index]
    m = cfg.model
    h, w = img_info["height"], img_info["width"]
    scale = min(m.min_size / min(h, w), m.max_size / max(h, w))
    size = (int(round(h * scale)), int(round(w * scale)))
    image = np.asarray(load_rgb(image_root / img_info["file_name"]).resize((size[1], size[0])))
    sub = {"images": [img_info], "annotations": [a for a in gt["annotations"]
                                                 if a["image_id"] == img_info["id"]]}
    boxes = next((b for b, _ in resized_gt(sub, m.min_size, m.max_size)), torch.zeros(0, 4))
    stride = backbone_stride(m.backbone)
    base = base_anchors(anchor_scales_px(cfg.anchors.scales, cfg.anchors.unit, stride),
                        cfg.anchors.ratios)
    centres = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, torch.tensor([[size[1] / 2, size[0] / 2]])])
    cells = {(int(cy // stride), int(cx // stride)) for cx, cy in centres.tolist()}
    feature = (math.ceil(size[0] / stride), math.ceil(size[1] / stride))
    grid = grid_anchors(base, feature, stride).view(feature[0], feature[1], -1, 4)
    anchors = torch.cat([grid[i, j] for i, j in sorted(cells)])
    fig, ax = plt.subplots(figsize=(7, 7 * size[0] / size[1]))
    show_image(ax, image, title=f"{img_info['file_name']}: {len(base)} anchors per cell at "
                                f"{len(cells)} cells (blue), GT (red), stride {stride}")
    draw_boxes(ax, anchors.numpy(), color="#4363d8", linewidth=0.7, show_text=False)
    draw_boxes(ax, boxes.numpy(), color="#e6194b", linewidth=2, show_text=False)
    ax.set_xlim(-0.25 * size[1], 1.25 * size[1])
    ax.set_ylim(1.25 * size[0], -0.25 * size[0])
    atomic_savefig(fig, path)
    plt.close(fig)


def plot_anchor_coverage(best_iou: dict[str, np.ndarray], result: dict, path: Path) -> None:
    """Histograms of each GT box's best anchor IoU, configured vs suggested anchors."""
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(0, 1, 41)
    for key, color in (("configured", "#4363d8"), ("suggested", "#f58231")):
        r = result[key]
        ax.hist(best_iou[key], bins=bins, alpha=0.55, color=color,
                label=f"{key}: scales {r['scales_px']} ratios {r['ratios']} "
                      f"({100 * r['fraction_above_pos_thresh']:.0f}% >= thresh)")
    ax.axvline(result["pos_iou_thresh"], color="black", linestyle="--", label="rpn.pos_iou_thresh")
    ax.set_xlabel("best anchor IoU per GT box")
    ax.set_ylabel("GT boxes")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)

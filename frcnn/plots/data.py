"""Figures of the data: the data summary, a preview of training images with their GT boxes, and
the augmented copies beside their originals."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from frcnn.data.image_io import load_rgb
from frcnn.fileio import atomic_savefig
from frcnn.plots.draw import draw_boxes, plt, show_image


def plot_summary(cocos: dict[str, dict[str, Any]], class_names: tuple[str, ...], path: Path) -> None:
    """Objects per class (per split, difficult hatched) and a histogram of box sizes sqrt(w*h)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(len(class_names))
    width = 0.8 / max(1, len(cocos))
    for k, (split, coco) in enumerate(cocos.items()):
        total = np.zeros(len(class_names))
        diff = np.zeros(len(class_names))
        for a in coco["annotations"]:
            total[a["category_id"] - 1] += 1
            diff[a["category_id"] - 1] += a["difficult"]
        bars = ax1.bar(x + k * width, total - diff, width, label=split)
        ax1.bar(x + k * width, diff, width, bottom=total - diff, hatch="//", alpha=0.5,
                color=bars.patches[0].get_facecolor() if bars.patches else None,
                label=f"{split} difficult")
    ax1.set_xticks(x + width * (len(cocos) - 1) / 2, class_names, rotation=60, ha="right",
                   fontsize=8)
    ax1.set_ylabel("objects")
    ax1.set_title("objects per class")
    ax1.legend(fontsize=7)
    sizes = {split: [math.sqrt(max(a["area"], 1.0)) for a in coco["annotations"]]
             for split, coco in cocos.items()}
    everything = [v for vs in sizes.values() for v in vs]
    if everything:
        bins = np.geomspace(max(1.0, min(everything)), max(everything) + 1, 30)
        for split, vs in sizes.items():
            ax2.hist(vs, bins=bins, alpha=0.6, label=split)
    ax2.set_xscale("log")
    ticks = [t for t in (4, 8, 16, 32, 64, 128, 256, 512, 1024)
             if everything and min(everything) / 2 <= t <= max(everything) * 2]
    ax2.set_xticks(ticks, [str(t) for t in ticks])
    ax2.minorticks_off()
    ax2.set_xlabel("box size sqrt(w*h), px")
    ax2.set_ylabel("objects")
    ax2.set_title("box sizes")
    ax2.legend(fontsize=7)
    atomic_savefig(fig, path, close=True, dpi=100, bbox_inches="tight")



def plot_preview(json_path: Path, path: Path, n: int = 12, cols: int = 4) -> None:
    """The first `n` images of a COCO JSON with their GT boxes (difficult dashed)."""


    coco = json.loads(Path(json_path).read_text())
    names = [c["name"] for c in coco["categories"]]
    images = coco["images"][:n]
    rows = max(1, math.ceil(len(images) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, im in zip(axes.flat, images):
        pixels = np.asarray(load_rgb(Path(json_path).parent / im["file_name"]))
        show_image(ax, pixels, title=im.get("voc_id", str(im["id"])))
        for a in by_image.get(im["id"], []):
            x, y, w, h = a["bbox"]
            draw_boxes(ax, [[x, y, x + w, y + h]], [a["category_id"]], names,
                       linestyle="--" if a["difficult"] else "-")
    atomic_savefig(fig, path, close=True, dpi=72, bbox_inches="tight")


def plot_augment_preview(json_path: Path, rows: list[tuple[int, list[int]]], path: Path) -> None:
    """One row per original image: the original, then its augmented copies, boxes drawn."""


    coco = json.loads(Path(json_path).read_text())
    names = [c["name"] for c in coco["categories"]]
    images = {im["id"]: im for im in coco["images"]}
    anns: dict[int, list[dict[str, Any]]] = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    cols = 1 + max((len(c) for _, c in rows), default=0)
    fig, axes = plt.subplots(max(1, len(rows)), cols, figsize=(3 * cols, 3 * max(1, len(rows))),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for r, (orig, copy_ids) in enumerate(rows):
        for c, image_id in enumerate([orig, *copy_ids]):
            im = images[image_id]
            pixels = np.asarray(load_rgb(Path(json_path).parent / im["file_name"]))
            show_image(axes[r, c], pixels, title="original" if c == 0 else f"copy {c - 1}")
            for a in anns.get(image_id, []):
                x, y, w, h = a["bbox"]
                draw_boxes(axes[r, c], [[x, y, x + w, y + h]], [a["category_id"]], names,
                           linestyle="--" if a["difficult"] else "-")
    atomic_savefig(fig, path, close=True, dpi=72, bbox_inches="tight")

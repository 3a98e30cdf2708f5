"""The augment stage: materialise `augment.copies` augmented variants of every training image.

`data/processed/trainval.json` -> `data/augmented/trainval.json` (the original images, referenced
in place, plus the copies in `data/augmented/images/`), `data/augmented/pipeline.json`
(`A.to_dict` of the pipeline, plus the seed) and `reports/augment_preview.png`.

The pipeline (`build_pipeline`), from `augment.*`, in order:
- RandomCropFromBorders (p = random_crop_p): cut up to 25 % off each side; boxes keep their
  visible part, and are dropped when less than `min_visibility` of them remains;
- Affine scale in [1 - scale_jitter, 1 + scale_jitter] (same canvas size, zoom in/out);
- ColorJitter of brightness/contrast/saturation by +- color_jitter (hue untouched);
- HorizontalFlip (p = hflip_p): the paper's only augmentation.
Boxes travel as `pascal_voc` (x1, y1, x2, y2 in pixels: our own 0-based convention) with the
label, difficult and truncated flags as label fields, so the flags stay aligned with their boxes.
Copy k of image i is drawn with seed (augment.seed, i, k): the output does not depend on order.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
from PIL import Image

from frcnn.config import AugmentConfig, Config
from frcnn.data.io import (DataError, atomic_save_figure, atomic_write_json, progress_bar,
                           replace_dir, staging_dir)

PROCESSED_DIR = Path("data/processed")
AUGMENTED_DIR = Path("data/augmented")
REPORTS_DIR = Path("reports")
LABEL_FIELDS = ["labels", "difficult", "truncated"]


def build_pipeline(acfg: AugmentConfig) -> A.Compose:
    """The bbox-aware albumentations pipeline for `augment.*` (transforms with strength 0 left out)."""
    transforms: list[A.BasicTransform] = []
    if acfg.random_crop_p > 0:
        transforms.append(A.RandomCropFromBorders(crop_left=0.25, crop_right=0.25, crop_top=0.25,
                                                  crop_bottom=0.25, p=acfg.random_crop_p))
    if acfg.scale_jitter > 0:
        s = acfg.scale_jitter
        transforms.append(A.Affine(scale=(1 - s, 1 + s), keep_ratio=True, fill=114, p=1.0))
    if acfg.color_jitter > 0:
        c = acfg.color_jitter
        transforms.append(A.ColorJitter(brightness=c, contrast=c, saturation=c, hue=0.0, p=1.0))
    if acfg.hflip_p > 0:
        transforms.append(A.HorizontalFlip(p=acfg.hflip_p))
    with warnings.catch_warnings():  # an empty pipeline (all off) is fine: copies are originals
        warnings.filterwarnings("ignore", message="Got processor for bboxes")
        return A.Compose(
            transforms,
            bbox_params=A.BboxParams(format="pascal_voc", label_fields=LABEL_FIELDS,
                                     min_visibility=acfg.min_visibility, min_width=1.0,
                                     min_height=1.0, clip=True),
            seed=acfg.seed)


def sample_seed(seed: int, image_index: int, copy: int) -> int:
    """The seed for one augmented copy: a function of (seed, image, copy) only."""
    return int(np.random.SeedSequence([seed, image_index, copy]).generate_state(1)[0])


def augment_sample(pipeline: A.Compose, image: np.ndarray, boxes: np.ndarray, labels: list[int],
                   difficult: list[int], truncated: list[int], seed: int
                   ) -> tuple[np.ndarray, np.ndarray, list[int], list[int], list[int]]:
    """Apply `pipeline` to one image (H, W, 3) uint8 and its boxes (N, 4) xyxy, with `seed`."""
    pipeline.set_random_seed(seed)
    out = pipeline(image=image, bboxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                   labels=list(labels), difficult=list(difficult), truncated=list(truncated))
    return (out["image"], np.asarray(out["bboxes"], np.float32).reshape(-1, 4),
            [int(v) for v in out["labels"]], [int(v) for v in out["difficult"]],
            [int(v) for v in out["truncated"]])


def run_augment(cfg: Config, processed_dir: str | Path = PROCESSED_DIR,
                out_dir: str | Path = AUGMENTED_DIR, reports_dir: str | Path = REPORTS_DIR,
                progress: bool = True) -> dict[str, Any]:
    """Write the augmented training set to `out_dir` and the preview; returns counts."""
    processed_dir, out_dir, reports_dir = Path(processed_dir), Path(out_dir), Path(reports_dir)
    src = processed_dir / "trainval.json"
    if not src.is_file():
        raise DataError(f"{src}: not found; run the preprocess stage (`frcnn preprocess`) first")
    coco = json.loads(src.read_text())
    pipeline = build_pipeline(cfg.augment)
    copies = cfg.augment.copies

    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []

    def add(entry: dict[str, Any], anns: list[dict[str, Any]]) -> int:
        image_id = len(images) + 1
        images.append({**entry, "id": image_id})
        for a in anns:
            annotations.append({**a, "id": len(annotations) + 1, "image_id": image_id})
        return image_id

    staging = staging_dir(out_dir)
    preview: list[tuple[int, list[int]]] = []  # (original id, copy ids) for the preview
    try:
        (staging / "images").mkdir()
        bar = progress_bar(coco["images"], enabled=progress, desc="augment", unit="img")
        for index, im in enumerate(bar):
            path = processed_dir / im["file_name"]
            anns = by_image.get(im["id"], [])
            # The original, referenced where it is (relative paths are from the JSON's folder).
            rel = os.path.relpath(path, out_dir).replace(os.sep, "/")
            orig_id = add({**im, "file_name": rel, "augmented_from": None}, anns)
            if copies == 0:
                continue
            try:
                with Image.open(path) as pil:
                    pixels = np.asarray(pil.convert("RGB"))
            except OSError as exc:
                raise DataError(f"{path}: cannot read image ({exc})") from None
            boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                             np.float32).reshape(-1, 4)
            copy_ids = []
            for k in range(copies):
                img, b, labels, diff, trunc = augment_sample(
                    pipeline, pixels, boxes, [a["category_id"] for a in anns],
                    [a["difficult"] for a in anns], [a["truncated"] for a in anns],
                    sample_seed(cfg.augment.seed, index, k))
                name = f"{im['id']:06d}_{k}.jpg"
                Image.fromarray(img).save(staging / "images" / name, quality=95)
                h, w = img.shape[:2]
                new_anns = []
                for (x1, y1, x2, y2), lab, d, t in zip(b.tolist(), labels, diff, trunc):
                    bw, bh = x2 - x1, y2 - y1
                    new_anns.append({"category_id": lab, "bbox": [round(x1, 2), round(y1, 2),
                                                                  round(bw, 2), round(bh, 2)],
                                     "area": round(bw * bh, 2), "iscrowd": d, "difficult": d,
                                     "truncated": t})
                copy_ids.append(add({"file_name": f"images/{name}", "width": w, "height": h,
                                     "voc_id": im.get("voc_id"), "augmented_from": orig_id,
                                     "copy": k}, new_anns))
            if len(preview) < 4:
                preview.append((orig_id, copy_ids))
        out = {**coco, "images": images, "annotations": annotations,
               "info": {**coco.get("info", {}),
                        "augmented": f"{copies} copies per image, seed {cfg.augment.seed}"}}
        atomic_write_json(staging / "trainval.json", out, indent=None)
        atomic_write_json(staging / "pipeline.json",
                          {**A.to_dict(pipeline), "seed": cfg.augment.seed, "copies": copies})
        replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    plot_augment_preview(out_dir / "trainval.json", preview, reports_dir / "augment_preview.png")
    summary = {"images": len(images), "originals": len(coco["images"]),
               "copies": len(images) - len(coco["images"]), "objects": len(annotations)}
    print(f"augment: {summary['originals']} originals + {summary['copies']} copies, "
          f"{summary['objects']} objects -> {out_dir / 'trainval.json'}")
    return summary


def plot_augment_preview(json_path: Path, rows: list[tuple[int, list[int]]], path: Path) -> None:
    """One row per original image: the original, then its augmented copies, boxes drawn."""
    import matplotlib.pyplot as plt

    from frcnn.visualize import draw_boxes, show_image

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
            pixels = np.asarray(Image.open(Path(json_path).parent / im["file_name"]).convert("RGB"))
            show_image(axes[r, c], pixels, title="original" if c == 0 else f"copy {c - 1}")
            for a in anns.get(image_id, []):
                x, y, w, h = a["bbox"]
                draw_boxes(axes[r, c], [[x, y, x + w, y + h]], [a["category_id"]], names,
                           linestyle="--" if a["difficult"] else "-")
    atomic_save_figure(fig, path, dpi=72)

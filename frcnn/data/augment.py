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

import warnings
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
from PIL import Image

from frcnn.config import AugmentConfig
from frcnn.data.image_io import load_rgb
from frcnn.errors import DataError

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


def augmented_copies(pipeline: A.Compose, path: Path, anns: list[dict[str, Any]], index: int,
                     copies: int, seed: int, im: dict[str, Any], orig_id: int, images_dir: Path
                     ) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """`copies` augmented variants of image `path` (COCO image `im`, annotations `anns`), saved
    as JPEGs in `images_dir`; per copy its COCO image entry and annotations (ids unset)."""
    try:
        pixels = np.asarray(load_rgb(path))
    except OSError as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                     np.float32).reshape(-1, 4)
    out = []
    for k in range(copies):
        img, b, labels, diff, trunc = augment_sample(
            pipeline, pixels, boxes, [a["category_id"] for a in anns],
            [a["difficult"] for a in anns], [a["truncated"] for a in anns],
            sample_seed(seed, index, k))
        name = f"{im['id']:06d}_{k}.jpg"
        Image.fromarray(img).save(images_dir / name, quality=95)
        h, w = img.shape[:2]
        new_anns = []
        for (x1, y1, x2, y2), lab, d, t in zip(b.tolist(), labels, diff, trunc):
            bw, bh = x2 - x1, y2 - y1
            new_anns.append({"category_id": lab, "bbox": [round(x1, 2), round(y1, 2),
                                                          round(bw, 2), round(bh, 2)],
                             "area": round(bw * bh, 2), "iscrowd": d, "difficult": d,
                             "truncated": t})
        out.append(({"file_name": f"images/{name}", "width": w, "height": h,
                     "voc_id": im.get("voc_id"), "augmented_from": orig_id, "copy": k}, new_anns))
    return out

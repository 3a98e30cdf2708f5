"""Using a trained checkpoint: load it as a detector, run it on image files.

`frcnn predict PATH... --checkpoint models/model.pt` writes, per image, `<stem>.json`
({"image", "width", "height", "detections": [{label, class, score, box xyxy}]}) and `<stem>.png`
with the boxes drawn (`<stem>-2.*`, `-3` ... when that name was already written in this run, is an
input, or is a file predict did not write for this image: `frcnn.pipeline.predict`).
Unreadable files are reported and skipped; the rest are still processed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import UnidentifiedImageError
from torch import Tensor, nn
from tqdm import tqdm

from frcnn.config import Config, ConfigError, config_from_dict
from frcnn.data.image_io import IMAGE_SUFFIXES, iter_image_files, load_rgb  # noqa: F401 -- re-exported
from frcnn.engine.checkpoint import load_checkpoint, load_weights
from frcnn.engine.device import autocast_dtype
from frcnn.errors import CheckpointError
from frcnn.model.build import build_model
from frcnn.model.faster_rcnn import FasterRCNN

# keys that change what a trained model outputs, not what it learned: free to set at evaluation
INFERENCE_RPN_KEYS = ("pre_nms_top_n_test", "post_nms_top_n_test", "nms_thresh", "min_box_size")
INFERENCE_ROI_KEYS = ("score_thresh", "nms_thresh", "detections_per_img")


def load_detector(checkpoint: Path, device: torch.device | str = "cpu",
                  inference: Config | None = None) -> tuple[FasterRCNN, list[str]]:
    """A checkpoint -> (model in eval mode, class names). The config travels in the checkpoint."""
    state = load_checkpoint(checkpoint)
    needed = ("model", "config", "num_classes", "class_names")
    missing = [k for k in needed if k not in state] if isinstance(state, dict) else list(needed)
    if missing:
        raise CheckpointError(f"{checkpoint}: not a frcnn checkpoint (no {', '.join(missing)})")
    try:
        cfg = config_from_dict(state["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{checkpoint}: its config is not valid here ({exc})") from None
    # the architecture is the checkpoint's; only inference-time knobs may come from the caller,
    # and the weights are the checkpoint's too: never download ImageNet weights just to overwrite
    model_cfg = dataclasses.replace(cfg.model, pretrained=False)
    rpn, roi = cfg.rpn, cfg.roi
    if inference is not None:
        rpn = dataclasses.replace(rpn, **{k: getattr(inference.rpn, k) for k in INFERENCE_RPN_KEYS})
        roi = dataclasses.replace(roi, **{k: getattr(inference.roi, k) for k in INFERENCE_ROI_KEYS})
    cfg = dataclasses.replace(cfg, model=model_cfg, rpn=rpn, roi=roi)
    model = build_model(cfg, num_classes=state["num_classes"])
    load_weights(model, state["model"], checkpoint)
    return model.eval().to(device), list(state["class_names"])


def read_image(path: Path) -> torch.Tensor:
    """An image file -> (3, H, W) float in [0, 1]; raises ValueError naming the file."""
    try:
        rgb = np.asarray(load_rgb(path), dtype=np.float32) / 255.0  # EXIF orientation applied
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable image ({exc})") from None
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


__all__ = [
    "inference_precision",
    "iter_image_files",
    "load_detector",
    "predict",
    "read_image",
    "to_coco_results",
]


def inference_precision(model: nn.Module, device: torch.device, amp: bool = False,
                        channels_last: bool = False) -> contextlib.AbstractContextManager:
    """Set up `model` for the opt-in `eval.amp` / `eval.channels_last` and return the context to
    run it in. Both off (the default): the model is left as it is and the context does nothing, so
    the numbers are exactly float32's. `amp` resolves as `train.amp` does (bfloat16 on a CPU with
    native support, else float32; float16 on CUDA)."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    dtype = autocast_dtype(device, amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _float_outputs(det: dict[str, Tensor]) -> dict[str, Tensor]:
    # under autocast a score may come out in bfloat16; callers get float32 (a no-op otherwise)
    return {k: (v.float() if v.is_floating_point() else v).cpu() for k, v in det.items()}


@torch.inference_mode()
def predict(model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device,
            progress: bool = True, *, amp: bool = False, channels_last: bool = False
            ) -> Iterator[tuple[Tensor, dict[str, Any], dict[str, Tensor]]]:
    """Yield (image, target, detections on CPU) per image; boxes (D, 4) xyxy in its pixels.
    `amp` / `channels_last`: `eval.amp` / `eval.channels_last` (see `inference_precision`)."""
    model.eval().to(device)
    context = inference_precision(model, device, amp, channels_last)
    for images, targets in tqdm(loader, desc="predict", disable=not progress, dynamic_ncols=True):
        with context:
            detections = model([img.to(device) for img in images])
        for image, target, det in zip(images, targets, detections):
            yield image, target, _float_outputs(det)


@torch.inference_mode()
def rpn_proposals(model: nn.Module, images: list[Tensor]) -> list[Tensor]:
    """The first stage's output for each image: proposals (P_i, 4) xyxy in the image's own pixels,
    best first, `rpn.post_nms_top_n_test` at most: what the second stage sees at test time."""
    model.eval()
    original = [tuple(img.shape[-2:]) for img in images]
    batch, sizes, _ = model.transform(images)
    proposals, _ = model.rpn(model.backbone(batch), sizes, None)
    scaled = model.transform.postprocess([{"boxes": p} for p in proposals], sizes, original)
    return [d["boxes"] for d in scaled]


def to_coco_results(image_id: int, det: dict[str, Tensor]) -> list[dict[str, Any]]:
    """One image's detections -> COCO results [{image_id, category_id, bbox xywh, score}]."""
    boxes = det["boxes"].tolist()
    return [{"image_id": int(image_id), "category_id": int(label),
             "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
             "score": round(float(score), 5)}
            for (x1, y1, x2, y2), label, score in zip(boxes, det["labels"].tolist(),
                                                      det["scores"].tolist())]

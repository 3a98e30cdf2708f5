"""Using a trained checkpoint: load it as a detector, run it on image files.

`frcnn predict PATH... --checkpoint models/model.pt` writes, per image, `<stem>.json`
({"image", "width", "height", "detections": [{label, class, score, box xyxy}]}) and `<stem>.png`
with the boxes drawn (`<stem>-2.*`, `-3` ... for a later image whose stem was already written).
Unreadable files are reported and skipped; the rest are still processed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from frcnn.checkpoint import CheckpointError, load_checkpoint
from frcnn.config import Config, ConfigError, config_from_dict
from frcnn.model.faster_rcnn import FasterRCNN, build_model

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


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
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint}: weights do not fit its own config "
                              f"({str(exc).splitlines()[0]})") from None
    return model.eval().to(device), list(state["class_names"])


def iter_image_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files as given, folders expanded (sorted) to the image files they hold."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield path


def read_image(path: Path) -> torch.Tensor:
    """An image file -> (3, H, W) float in [0, 1]; raises ValueError naming the file."""
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable image ({exc})") from None
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def detections_to_json(path: Path, image: torch.Tensor, det: dict[str, torch.Tensor],
                       class_names: list[str]) -> dict[str, Any]:
    return {"image": str(path), "height": int(image.shape[1]), "width": int(image.shape[2]),
            "detections": [{"label": int(lab), "class": class_names[int(lab) - 1],
                            "score": round(float(s), 4), "box": [round(float(v), 1) for v in b]}
                           for b, lab, s in zip(det["boxes"], det["labels"], det["scores"])]}


@torch.inference_mode()
def predict_files(model: FasterRCNN, class_names: list[str], paths: Iterable[Path], out_dir: Path,
                  conf: float = 0.5) -> tuple[list[Path], list[str]]:
    """Detect on every image file; returns (JSON files written, one error line per skipped file)."""
    from frcnn.reports import atomic_savefig, atomic_write_text
    from frcnn.visualize import draw_boxes, show_image
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    written, errors = [], []
    used: set[str] = set()
    for path in iter_image_files(paths):
        try:
            image = read_image(path)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        det = model([image.to(device)])[0]
        keep = det["scores"] >= conf
        det = {k: v[keep].cpu() for k, v in det.items()}
        record = detections_to_json(path, image, det, class_names)
        # a.jpg and a.png, or x/001.jpg and y/001.jpg, must not overwrite each other's outputs
        stem, n = path.stem, 2
        while stem in used:
            stem, n = f"{path.stem}-{n}", n + 1
        used.add(stem)
        json_path = out_dir / f"{stem}.json"
        atomic_write_text(json_path, json.dumps(record, indent=2) + "\n")
        fig, ax = plt.subplots(figsize=(6, 6 * image.shape[1] / image.shape[2]))
        show_image(ax, image.permute(1, 2, 0).numpy(), title=path.name)
        draw_boxes(ax, det["boxes"].numpy(), det["labels"].tolist(), class_names,
                   scores=det["scores"].tolist())
        atomic_savefig(fig, out_dir / f"{stem}.png")
        plt.close(fig)
        written.append(json_path)
    return written, errors


__all__ = ["load_detector", "predict_files", "read_image", "iter_image_files"]

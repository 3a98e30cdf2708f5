"""Backbone pretraining on object crops: the offline stand-in for ImageNet weights.

The paper's detector starts from a VGG16 that first learnt to classify ImageNet. Offline there is
no ImageNet, and a detector learnt from random weights on a CPU budget finds objects long before
it can tell them apart: on the shape-only set (`data.synth.class_colour: 0`), after 8 CPU
minutes, its proposals cover 97 % of the test objects at IoU 0.5 but the right class wins only a
third of the time. Learning "which shape" through whole images, RoI pooling and 75 % background
RoIs is slow; learning it from object crops is fast (the same trunk reaches ~85 % crop accuracy
in about two minutes). So, as in the paper, the trunk is a classifier first: it classifies the
trainval objects, cropped with some context and resized to one size, in large batches; the
detector then starts from its weights.

Only trainval annotations are used (never test); every tenth trainval image is held out to report
the accuracy (`reports/pretrain.json`). Difficult objects are skipped, as in training.

Shapes: N crops, S = `pretrain.crop_size`, K foreground classes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from frcnn.config import Config, TrainConfig
from frcnn.data.dataset import DetectionDataset
from frcnn.data.image_io import load_rgb
from frcnn.engine.checkpoint import load_checkpoint
from frcnn.engine.schedule import lr_at
from frcnn.errors import CheckpointError, DataError
from frcnn.model.backbone import build_backbone
from frcnn.model.faster_rcnn import FasterRCNN
from frcnn.model.transform import IMAGENET_MEAN, IMAGENET_STD
from frcnn.progress import progress_bar

HOLDOUT_EVERY = 10  # every 10th image's objects are held out for the reported accuracy


@dataclass
class Crops:
    pixels: Tensor       # (N, 3, S, S) uint8
    labels: Tensor       # (N,) int64 in 0..K-1
    holdout: Tensor      # (N,) bool: from a held-out image
    class_names: tuple[str, ...]


def object_crops(gt_json: Path, crop_size: int, context: float) -> Crops:
    """Every non-difficult GT box of a COCO file, widened by `context` x its size on each side,
    cut out (zero padding past the border) and resized to crop_size x crop_size."""
    dataset = DetectionDataset(gt_json, train=False)  # parses, checks and drops difficult boxes
    images = sorted(dataset.images, key=lambda im: im["id"])
    pixels, labels, holdout = [], [], []
    for i, im in enumerate(images):
        if not len(im["labels"]):
            continue
        try:
            image = load_rgb(im["path"])
        except OSError as exc:
            raise DataError(f"{im['path']}: cannot read image ({exc})") from None
        for (x0, y0, x1, y1), label in zip(im["boxes"].tolist(), im["labels"].tolist()):
            dx, dy = context * (x1 - x0), context * (y1 - y0)
            box = (round(x0 - dx), round(y0 - dy), round(x1 + dx), round(y1 + dy))
            pixels.append(np.asarray(image.crop(box).resize((crop_size, crop_size), Image.BILINEAR)))
            labels.append(label - 1)
            holdout.append(i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1)
    if not pixels:
        raise DataError(f"{gt_json}: no non-difficult objects to pretrain on")
    return Crops(torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous(),
                 torch.tensor(labels), torch.tensor(holdout), dataset.class_names)


class CropClassifier(nn.Module):
    """(N, 3, S, S) in [0, 1] -> normalise -> trunk -> global average pool -> FC -> (N, K) logits."""

    def __init__(self, trunk: nn.Module, channels: int, num_classes: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.fc = nn.Linear(channels, num_classes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.trunk((x - self.mean) / self.std).mean(dim=(2, 3)))


def accuracy(model: CropClassifier, pixels: Tensor, labels: Tensor, batch: int = 256) -> float:
    """Fraction of crops whose argmax class is the label (eval mode, no grad)."""
    if len(labels) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        right = sum(int((model(pixels[i:i + batch].float() / 255).argmax(1)
                         == labels[i:i + batch]).sum()) for i in range(0, len(labels), batch))
    model.train(was_training)
    return right / len(labels)


def pretrain_backbone(cfg: Config, gt_json: Path, progress: bool = True
                      ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Train the backbone as a crop classifier; returns (trunk state_dict, summary)."""
    p, m = cfg.pretrain, cfg.model
    crops = object_crops(gt_json, p.crop_size, p.context)
    train_idx = torch.where(~crops.holdout)[0]
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(m.backbone, pretrained=False, frozen_bn=False, freeze_stem=False)
    model = CropClassifier(backbone.body, backbone.out_channels, len(crops.class_names)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    schedule = TrainConfig(lr=p.lr, warmup_steps=0, schedule="cosine")  # to 0: the last steps settle
    start, losses = time.perf_counter(), []
    for step in progress_bar(range(p.steps), enabled=progress, desc="pretrain", unit="step"):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, p.steps, schedule)
        pick = train_idx[torch.randint(len(train_idx), (p.batch_size,), generator=generator)]
        x = crops.pixels[pick].float() / 255
        flip = torch.rand(len(pick), generator=generator) < 0.5  # shapes are mirror-symmetric classes
        x[flip] = x[flip].flip(-1)
        loss = F.cross_entropy(model(x), crops.labels[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach().item())
    held = crops.holdout
    summary = {"steps": p.steps, "crops": int((~held).sum()), "heldout_crops": int(held.sum()),
               "seconds": round(time.perf_counter() - start, 1),
               "final_loss": round(float(np.mean(losses[-20:])), 4) if losses else None,
               "heldout_accuracy": round(accuracy(model, crops.pixels[held], crops.labels[held]), 4),
               "chance_accuracy": round(1 / len(crops.class_names), 4)}
    return backbone.body.state_dict(), summary


def pretrain_key(cfg: Config) -> dict[str, Any]:
    """What models/backbone.pt must have been made with to be used by this config."""
    return {"seed": cfg.seed, "model.backbone": cfg.model.backbone,
            **{f"pretrain.{k}": v for k, v in cfg.to_dict()["pretrain"].items()}}



def load_pretrained_backbone(model: FasterRCNN, path: Path, cfg: Config) -> dict[str, Any] | None:
    """With pretrain.steps > 0: the pretrain stage's trunk weights into `model`; returns its
    summary. A missing file or one made with other settings is an error naming the file."""
    if not cfg.pretrain.steps:
        return None
    if not path.exists():
        raise CheckpointError(f"{path}: not found; pretrain.steps is {cfg.pretrain.steps}, so run "
                              f"`frcnn pretrain` first (dvc repro does) or set pretrain.steps: 0")
    state = load_checkpoint(path)
    made_with, wanted = state.get("made_with") or {}, pretrain_key(cfg)
    stale = [f"{k} ({made_with.get(k)!r} there, {v!r} now)" for k, v in wanted.items()
             if made_with.get(k) != v]
    if stale or state.get("backbone") is None:
        raise CheckpointError(f"{path}: made with other settings ({'; '.join(stale) or 'no weights'}); "
                              f"run `frcnn pretrain` again")
    model.backbone.load_state_dict(state["backbone"])
    return state.get("summary")

"""From a list of images of any size to one padded, normalised batch tensor, and back.

1. check every image and target (a bad box must fail here, not become a NaN loss later);
2. resize so the short side is `min_size` unless the long side would exceed `max_size`
   (the paper's 600 / 1000), scaling the GT boxes by the same factors; in training with
   `min_size_train` (multi-scale training, detectron2's 480-800), one short side per batch is
   drawn from that list;
3. normalise with the ImageNet mean/std the torchvision backbones expect;
4. pad the bottom/right to a common size divisible by the backbone stride.
`postprocess` maps detection boxes back to each input image's own pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def validate_inputs(images: list[Tensor], targets: list[dict[str, Tensor]] | None,
                    num_classes: int) -> None:
    """Raise ValueError naming the image index and the problem for any unusable input."""
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        raise ValueError("images: expected a non-empty list of Tensor[3, H, W]")
    for i, img in enumerate(images):
        if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != 3:
            shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
            raise ValueError(f"image {i}: expected a Tensor[3, H, W], got {shape}")
        if not img.is_floating_point():
            raise ValueError(f"image {i}: expected a float tensor in [0, 1], got {img.dtype}")
        if img.shape[1] < 1 or img.shape[2] < 1:
            raise ValueError(f"image {i}: empty image of shape {tuple(img.shape)}")
    if targets is None:
        return
    if len(targets) != len(images):
        raise ValueError(f"targets: {len(targets)} targets for {len(images)} images")
    for i, t in enumerate(targets):
        boxes, labels = t.get("boxes"), t.get("labels")
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"target {i}: boxes must be a float Tensor[N, 4] xyxy")
        if not isinstance(labels, Tensor) or labels.shape != boxes.shape[:1]:
            raise ValueError(f"target {i}: labels must be a Tensor[N] matching boxes")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"target {i}: labels must be integers, got {labels.dtype}")
        if boxes.numel() and not torch.isfinite(boxes).all():
            raise ValueError(f"target {i}: boxes contain NaN or inf")
        bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if bad.any():
            j = int(torch.where(bad)[0][0])
            raise ValueError(f"target {i}: box {j} {boxes[j].tolist()} has x2 <= x1 or y2 <= y1")
        out = (labels < 1) | (labels > num_classes)
        if out.any():
            j = int(torch.where(out)[0][0])
            raise ValueError(f"target {i}: label {int(labels[j])} of box {j} is outside "
                             f"1..{num_classes} (0 is background)")


class ImageTransform(nn.Module):
    """Resize + normalise + pad. Holds no parameters, only the sizes.

    `min_size`: the short side at test time, and in training unless `min_size_train` (a list of
    short sides) is given; then each training batch is resized to one of them, drawn from the
    global torch RNG (which the checkpoint restores, so a resumed run draws the same sizes).
    """

    def __init__(self, min_size: int, max_size: int, size_divisible: int = 32,
                 min_size_train: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.min_size = min_size
        self.max_size = max_size
        self.size_divisible = size_divisible
        self.min_size_train = tuple(min_size_train)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    def scale_for(self, height: int, width: int, min_size: int | None = None) -> float:
        """The resize factor of an image: short side to `min_size` (default `self.min_size`),
        unless the long side would then exceed `max_size`."""
        short = self.min_size if min_size is None else min_size
        return min(short / min(height, width), self.max_size / max(height, width))

    def batch_min_size(self) -> int:
        """The short side of this batch: drawn from `min_size_train` in training, else min_size."""
        if self.training and self.min_size_train:
            return self.min_size_train[int(torch.randint(len(self.min_size_train), ()))]
        return self.min_size

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
                ) -> tuple[Tensor, list[tuple[int, int]], list[dict[str, Tensor]] | None]:
        """images (3, H_i, W_i) -> batch (N, 3, H, W), sizes [(h_i, w_i)] after resize, targets."""
        resized, sizes, new_targets = [], [], []
        short = self.batch_min_size()
        for i, img in enumerate(images):
            h, w = img.shape[-2:]
            scale = self.scale_for(h, w, short)
            img = img.to(self.mean.dtype)  # a float64 image would not meet the float32 weights
            img = (img - self.mean) / self.std
            img = F.interpolate(img[None], scale_factor=scale, mode="bilinear",
                                recompute_scale_factor=True, align_corners=False)[0]
            nh, nw = img.shape[-2:]
            resized.append(img)
            sizes.append((nh, nw))
            if targets is not None:
                ratio = torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=torch.float32,
                                     device=img.device)
                # int64 labels whatever integer type came in: cross-entropy and indexing need them
                new_targets.append({**targets[i], "boxes": targets[i]["boxes"].float() * ratio,
                                    "labels": targets[i]["labels"].to(torch.int64)})
        d = self.size_divisible
        max_h = int(math.ceil(max(s[0] for s in sizes) / d) * d)
        max_w = int(math.ceil(max(s[1] for s in sizes) / d) * d)
        batch = resized[0].new_zeros((len(resized), 3, max_h, max_w))
        for b, img in zip(batch, resized):
            b[:, : img.shape[1], : img.shape[2]].copy_(img)
        return batch, sizes, (new_targets if targets is not None else None)

    @staticmethod
    def postprocess(detections: list[dict[str, Tensor]], sizes: list[tuple[int, int]],
                    original_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Rescale each detection's boxes from the resized image back to the original image."""
        for det, (h, w), (oh, ow) in zip(detections, sizes, original_sizes):
            ratio = torch.tensor([ow / w, oh / h, ow / w, oh / h], device=det["boxes"].device)
            det["boxes"] = det["boxes"] * ratio
        return detections

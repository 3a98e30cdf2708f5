"""The left-right flip, the paper's one augmentation: one function for the dataset and the
training loop's online flip."""

from __future__ import annotations

import torch
from torch import Tensor


def hflip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Boxes (N, 4) xyxy mirrored in an image `width` pixels wide: x -> width - x."""
    return torch.stack((width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]), dim=1)


def hflip(image: Tensor, target: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Mirror image (3, H, W) and its target's boxes (N, 4) xyxy left-right."""
    return image.flip(-1), {**target, "boxes": hflip_boxes(target["boxes"], image.shape[-1])}


def flip_where(coins: Tensor, images: list[Tensor], targets: list[dict[str, Tensor]]
               ) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Flip the images (and targets) whose coin (bool, one per image) is set."""
    pairs = [hflip(i, t) if c else (i, t) for i, t, c in zip(images, targets, coins)]
    return [p[0] for p in pairs], [p[1] for p in pairs]

"""Anchors: k = |scales| * |ratios| reference boxes at every cell of the feature map.

Convention (one, used everywhere):
- a scale `s` is the anchor's side length sqrt(w * h) in input-image pixels (the paper's
  128/256/512). With `anchors.unit: cells` the configured scales are multiplied by the backbone
  stride first, so the reference design's {2, 4, 6} cells at stride 32 are 64/128/192 px.
- a ratio `r` is h / w, so for each (s, r): w = s / sqrt(r), h = s * sqrt(r), and the area stays
  s^2 whatever the ratio (torchvision's and the paper's convention, unlike the reference design's
  w = s * r, h = s, whose area changes with r).
- the anchor of feature cell (i, j) is centred on the image pixel it maps to,
  ((j + 0.5) * stride, (i + 0.5) * stride).

Order: anchors are laid out (H, W, A) → flattened to (H * W * A, 4), the same order in which the
RPN head's (N, A, H, W) outputs are flattened after a permute to (N, H, W, A).
"""

from __future__ import annotations

import torch
from torch import Tensor


def base_anchors(scales: tuple[float, ...], ratios: tuple[float, ...],
                 dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> Tensor:
    """The k = len(scales) * len(ratios) anchors centred on (0, 0) -> (k, 4) xyxy.

    Ordered ratio-major: [(r0, s0), (r0, s1), ..., (r1, s0), ...].
    """
    s = torch.as_tensor(scales, dtype=dtype, device=device)
    r = torch.as_tensor(ratios, dtype=dtype, device=device)
    w = (s[None, :] / torch.sqrt(r)[:, None]).reshape(-1)
    h = (s[None, :] * torch.sqrt(r)[:, None]).reshape(-1)
    return torch.stack((-w, -h, w, h), dim=1) / 2


def grid_anchors(base: Tensor, feature_size: tuple[int, int], stride: int) -> Tensor:
    """Shift `base` (k, 4) to every cell of an (H, W) feature map -> (H * W * k, 4) xyxy pixels."""
    height, width = feature_size
    ys = (torch.arange(height, dtype=base.dtype, device=base.device) + 0.5) * stride
    xs = (torch.arange(width, dtype=base.dtype, device=base.device) + 0.5) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)  # (H*W, 1, 4)
    return (shifts + base[None]).reshape(-1, 4)


def anchor_scales_px(scales: tuple[float, ...], unit: str, stride: int) -> tuple[float, ...]:
    """Configured scales -> pixels: unchanged for `px`, times the backbone stride for `cells`."""
    if unit == "cells":
        return tuple(float(x) * stride for x in scales)
    return tuple(float(x) for x in scales)


class AnchorGenerator:
    """Anchors for a feature map size, cached: the grid depends only on (H, W), not on pixels."""

    def __init__(self, scales_px: tuple[float, ...], ratios: tuple[float, ...], stride: int) -> None:
        self.scales_px = scales_px
        self.ratios = ratios
        self.stride = stride
        self.num_anchors = len(scales_px) * len(ratios)
        self._cache: dict[tuple, Tensor] = {}

    def __call__(self, feature_size: tuple[int, int], device: torch.device) -> Tensor:
        """(H, W) -> (H * W * k, 4) anchors on `device`."""
        key = (tuple(feature_size), str(device))
        if key not in self._cache:
            base = base_anchors(self.scales_px, self.ratios, device=device)
            self._cache[key] = grid_anchors(base, feature_size, self.stride)
        return self._cache[key]

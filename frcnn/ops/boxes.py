"""Box maths as small pure functions on tensors.

Shapes: boxes are (N, 4) xyxy, 0-based continuous pixels; "deltas" are (N, 4) (tx, ty, tw, th).

Box coding (Ren et al. 2015, eq. 2), for an anchor/proposal A and a target G, both as centre and
size (x, y, w, h):

    tx = wx * (Gx - Ax) / Aw      ty = wy * (Gy - Ay) / Ah
    tw = ww * log(Gw / Aw)        th = wh * log(Gh / Ah)

Log-space sizes keep decoded widths positive and make a 2x error cost the same at any scale. The
weights (wx, wy, ww, wh) rescale the targets to roughly unit variance: (1, 1, 1, 1) for the RPN and
(10, 10, 5, 5) for the second stage, as in the paper's released code and torchvision.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["box_iou", "box_area", "BoxCoder", "clip_boxes", "remove_small_boxes"]

# exp(dw) is clamped so a wild early prediction cannot overflow to inf (a NaN-loss source in peers)
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def box_area(boxes: Tensor) -> Tensor:
    """boxes (N, 4) xyxy -> areas (N,)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


class BoxCoder:
    """Encodes target boxes as deltas relative to reference boxes, and decodes them back."""

    def __init__(self, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
                 scale_clamp: float = DEFAULT_SCALE_CLAMP) -> None:
        self.weights = weights
        self.scale_clamp = scale_clamp

    def encode(self, targets: Tensor, references: Tensor) -> Tensor:
        """targets (N, 4), references (N, 4) xyxy -> deltas (N, 4)."""
        wx, wy, ww, wh = self.weights
        gx, gy, gw, gh = _centre_size(targets.float())
        ax, ay, aw, ah = _centre_size(references.float())
        return torch.stack((wx * (gx - ax) / aw, wy * (gy - ay) / ah,
                            ww * torch.log(gw / aw), wh * torch.log(gh / ah)), dim=-1)

    def decode(self, deltas: Tensor, references: Tensor) -> Tensor:
        """deltas (N, 4*C) for C boxes per reference, references (N, 4) -> boxes (N, 4*C) xyxy."""
        wx, wy, ww, wh = self.weights
        references = references.to(deltas.dtype)
        ax, ay, aw, ah = (t.unsqueeze(1) for t in _centre_size(references))
        dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)
        cx, cy = ax + dx * aw, ay + dy * ah
        w, h = aw * torch.exp(dw), ah * torch.exp(dh)
        boxes = torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=2)
        # not reshape(N, -1): that is ambiguous, and fails, when N = 0 (an image with no proposals)
        return boxes.reshape(deltas.shape[0], deltas.shape[1])


def clip_boxes(boxes: Tensor, height: float | Tensor, width: float | Tensor) -> Tensor:
    """Clip (..., 4) xyxy boxes to the image [0, width] x [0, height].

    `height`/`width` may be tensors broadcastable to boxes[..., 0] (one size per image in a batch).
    """
    x = torch.minimum(boxes[..., 0::2].clamp(min=0), torch.as_tensor(width, dtype=boxes.dtype,
                                                                    device=boxes.device)[..., None])
    y = torch.minimum(boxes[..., 1::2].clamp(min=0), torch.as_tensor(height, dtype=boxes.dtype,
                                                                     device=boxes.device)[..., None])
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the (N, 4) boxes whose width and height are both >= min_size."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return torch.where((w >= min_size) & (h >= min_size))[0]

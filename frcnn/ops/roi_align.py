"""RoIAlign through `torch.nn.functional.grid_sample`: the same numbers as torchvision's kernel,
with a backward that is ~4x cheaper on a CPU.

Why it exists: torchvision's CPU `roi_align` backward is a serial loop that recomputes the bilinear
weights for every channel; on the default CPU recipe it took 110 of a training step's 370 ms
(28 %). RoIAlign with a fixed number of samples per bin is bilinear sampling at fixed points, which
is what `grid_sample` does, and its backward is vectorised. `roi.op: align` keeps torchvision's
kernel (adaptive sampling_ratio 0 included); tests/test_roi_align.py holds this one to it, values
and gradients.

The maths (torchvision's `aligned=True`): RoI (x1, y1, x2, y2) in image pixels maps to feature
coordinates x * scale - 0.5 (pixel centres at integers); its S x S bins each average
`sampling_ratio`^2 bilinear samples at the centres of a regular sub-grid. A sample between -1 and 0
(or size-1 and size) reads the border value, as in torchvision; RoIs are clipped to the image, so
samples further out do not occur.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sample_points(rois: Tensor, output_size: int, sampling_ratio: int, spatial_scale: float) -> Tensor:
    """rois (R, 4) xyxy image px -> sample coordinates (R, S*sr, S*sr, 2) as (x, y) in feature px."""
    n = output_size * sampling_ratio
    t = (torch.arange(n, dtype=rois.dtype, device=rois.device) + 0.5) / n  # (n,) centres in [0, 1]
    start = rois[:, :2] * spatial_scale - 0.5  # (R, 2)
    size = (rois[:, 2:] - rois[:, :2]) * spatial_scale  # (R, 2)
    xs = start[:, 0, None] + size[:, 0, None] * t  # (R, n)
    ys = start[:, 1, None] + size[:, 1, None] * t
    return torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)


def roi_align_grid(features: Tensor, rois: list[Tensor], output_size: int, spatial_scale: float,
                   sampling_ratio: int) -> Tensor:
    """features (N, C, H, W), rois [(R_i, 4) xyxy px] per image -> (sum R_i, C, S, S) float32.

    Equals `torchvision.ops.roi_align(features, rois, S, spatial_scale, sampling_ratio,
    aligned=True)` for sampling_ratio >= 1. Samples in float32 (as torchvision's autocast does).
    """
    if sampling_ratio < 1:
        raise ValueError(f"roi_align_grid needs a fixed sampling_ratio >= 1, got {sampling_ratio}")
    n_img, channels, height, width = features.shape
    n = output_size * sampling_ratio
    counts = [r.shape[0] for r in rois]
    r_max = max(counts, default=0)
    if r_max == 0:
        return features.new_zeros((0, channels, output_size, output_size), dtype=torch.float32)
    # one (R_max * n, n) grid per image, zero-padded to the longest RoI list: a single call
    grid = features.new_zeros((n_img, r_max, n, n, 2), dtype=torch.float32)
    for i, r in enumerate(rois):
        if r.shape[0]:
            points = sample_points(r.detach().float(), output_size, sampling_ratio, spatial_scale)
            # grid_sample's align_corners=False maps pixel x to (2x + 1) / W - 1
            grid[i, : r.shape[0]] = (2 * points + 1) / points.new_tensor([width, height]) - 1
    out = F.grid_sample(features.float(), grid.view(n_img, r_max * n, n, 2), mode="bilinear",
                        padding_mode="border", align_corners=False)  # (N, C, R_max * n, n)
    out = out.reshape(n_img, channels, r_max, n, n).transpose(1, 2)  # (N, R_max, C, n, n)
    out = torch.cat([out[i, :c] for i, c in enumerate(counts)])  # (R, C, n, n)
    if sampling_ratio > 1:
        out = F.avg_pool2d(out, sampling_ratio)
    return out

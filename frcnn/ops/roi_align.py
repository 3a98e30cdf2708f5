"""RoIAlign through `torch.nn.functional.grid_sample`: the same numbers as torchvision's kernel,
with a backward that is much cheaper on a CPU at the default recipe's sizes (not at C4's, below).

Why it exists: torchvision's CPU `roi_align` backward is a serial loop that recomputes the bilinear
weights for every channel; on the default CPU recipe it took 110 of a training step's 370 ms
(28 %). RoIAlign with a fixed number of samples per bin is bilinear sampling at fixed points, which
is what `grid_sample` does, and its backward is vectorised. `roi.op: align` keeps torchvision's
kernel; tests/ops/test_roi_align.py holds this one to it, values and gradients, for both kinds of
sampling below.

The maths (torchvision's `aligned=True`): RoI (x1, y1, x2, y2) in image pixels maps to feature
coordinates x * scale - 0.5 (pixel centres at integers); its S x S bins each average
grid_h x grid_w bilinear samples at the centres of a regular sub-grid. A sample between -1 and 0
(or size-1 and size) reads the border value, as in torchvision; RoIs are clipped to the image, so
samples further out do not occur.

Two ways to choose the grid:
- `sampling_ratio` >= 1: grid_h = grid_w = sampling_ratio for every RoI, so all RoIs share one
  sampling pattern and a single `grid_sample` call serves the whole batch (the default recipe).
- `sampling_ratio` 0, adaptive, as detectron2 and torchvision do it: each RoI gets
  grid_h = ceil(roi_h / S) and grid_w = ceil(roi_w / S) samples per bin (roi_h, roi_w in feature
  px, not clamped to >= 1), i.e. samples at most one feature cell apart, so a large RoI is not
  under-sampled and a small one is not over-sampled. detectron2's C4 recipes (its VOC Faster R-CNN
  among them) use POOLER_SAMPLING_RATIO 0, so reproducing them needs it. A RoI of zero height or
  width gets no samples and pools to 0, as in torchvision. RoIs with equal (grid_h, grid_w) are
  sampled together, one `grid_sample` call per distinct grid. Cost: `grid_sample` materialises
  every sample before `avg_pool2d` averages them, so at C4 sizes (C 1024, S 14, 512 RoIs) a CPU
  forward + backward measured ~1.25x slower than torchvision's kernel, not faster; there
  `roi.op: align` is the cheaper choice on a CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sample_points(rois: Tensor, output_size: int, sampling_ratio: int | tuple[int, int],
                  spatial_scale: float) -> Tensor:
    """rois (R, 4) xyxy image px -> sample coordinates (R, S*sr_h, S*sr_w, 2), (x, y) in feature px.

    sampling_ratio: samples per bin along both axes, or (sr_h, sr_w) along y and along x.
    """
    ratio_h, ratio_w = ((sampling_ratio, sampling_ratio) if isinstance(sampling_ratio, int)
                        else sampling_ratio)
    start = rois[:, :2] * spatial_scale - 0.5  # (R, 2)
    size = (rois[:, 2:] - rois[:, :2]) * spatial_scale  # (R, 2)
    xs = start[:, 0, None] + size[:, 0, None] * unit_centres(output_size * ratio_w, rois)  # (R, nw)
    ys = start[:, 1, None] + size[:, 1, None] * unit_centres(output_size * ratio_h, rois)  # (R, nh)
    return torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)


def unit_centres(n: int, like: Tensor) -> Tensor:
    """n -> (n,) centres of n equal cells of [0, 1], in like's dtype and device."""
    return (torch.arange(n, dtype=like.dtype, device=like.device) + 0.5) / n


def adaptive_grid_sizes(rois: Tensor, output_size: int, spatial_scale: float) -> Tensor:
    """rois (R, 4) xyxy image px, float32 -> (R, 2) int64 samples per bin (grid_h, grid_w).

    ceil(roi side / S), with the side computed as torchvision's kernel computes it, in float32
    from the shifted corners: a side that is a whole multiple of S in one rounding and not in
    another would change the grid, and with it every bin of that RoI. A zero (or negative) side
    gives 0 samples.
    """
    corners = rois * spatial_scale - 0.5  # (R, 4) feature px
    size = corners[:, 2:] - corners[:, :2]  # (R, 2) as (w, h)
    return torch.ceil(size / output_size).clamp(min=0).long().flip(1)


def pool_same_grid(features: Tensor, rois: list[Tensor], output_size: int, grid: tuple[int, int],
                   spatial_scale: float) -> list[Tensor]:
    """features (N, C, H, W) float32, rois [(R_i, 4) xyxy px] per image, all with the same
    (grid_h, grid_w) >= 1 samples per bin -> [(R_i, C, S, S)] for the images with R_i > 0, views."""
    n_img, channels, height, width = features.shape
    grid_h, grid_w = grid
    n_h, n_w = output_size * grid_h, output_size * grid_w
    present = [i for i, r in enumerate(rois) if r.shape[0]]
    counts = [rois[i].shape[0] for i in present]
    # as in the fixed path, one (R_max * n_h, n_w) grid per image, zero-padded to the longest
    # RoI list; images without RoIs of this grid are left out rather than padded
    grid_xy = features.new_zeros((len(present), max(counts), n_h, n_w, 2))
    for slot, i in enumerate(present):
        points = sample_points(rois[i], output_size, grid, spatial_scale)  # (R_i, n_h, n_w, 2)
        # grid_sample's align_corners=False maps pixel x to (2x + 1) / W - 1
        grid_xy[slot, : counts[slot]] = (2 * points + 1) / points.new_tensor([width, height]) - 1
    source = features if len(present) == n_img else features[present]
    out = F.grid_sample(source, grid_xy.view(len(present), -1, n_w, 2), mode="bilinear",
                        padding_mode="border", align_corners=False)  # (M, C, R_max * n_h, n_w)
    if grid_h * grid_w > 1:
        # pooled before the RoIs are cut out: each RoI's n_h rows are whole windows, and the cut
        # then copies grid_h * grid_w times fewer numbers
        out = F.avg_pool2d(out, (grid_h, grid_w))  # (M, C, R_max * S, S)
    out = out.view(len(present), channels, -1, output_size, output_size).transpose(1, 2)
    return [out[slot, :c] for slot, c in enumerate(counts)]  # (M, R_max, C, S, S) cut to R_i


def roi_align_adaptive(features: Tensor, rois: list[Tensor], output_size: int,
                       spatial_scale: float) -> Tensor:
    """features (N, C, H, W), rois [(R_i, 4) xyxy px] per image, sum R_i > 0 -> (sum R_i, C, S, S)
    float32 with torchvision's sampling_ratio 0: ceil(roi side / S) samples per bin and axis."""
    features = features.float()  # once here, not once per grid group
    boxes = torch.cat([r.detach().float() for r in rois])  # (R, 4)
    image_ids = torch.repeat_interleave(
        torch.arange(len(rois), device=boxes.device),
        torch.tensor([r.shape[0] for r in rois], device=boxes.device))  # (R,)
    grids = adaptive_grid_sizes(boxes, output_size, spatial_scale)  # (R, 2)
    distinct, group = torch.unique(grids, dim=0, return_inverse=True)  # (G, 2), (R,)
    pieces, order = [], []  # pieces[k] holds the pooled RoIs whose indices are order[k]
    for g, (grid_h, grid_w) in enumerate(distinct.tolist()):
        members = (group == g).nonzero().squeeze(1)  # (R_g,)
        if grid_h * grid_w == 0:  # a zero-size RoI: no samples, a 0 bin (torchvision's 0 / 1)
            pieces.append(features.new_zeros((members.numel(), features.shape[1], output_size,
                                              output_size)))
            order.append(members)
            continue
        per_image = [members[image_ids[members] == i] for i in range(len(rois))]
        pieces += pool_same_grid(features, [boxes[m] for m in per_image], output_size,
                                 (grid_h, grid_w), spatial_scale)
        order += [m for m in per_image if m.numel()]  # pool_same_grid skips images without RoIs
    # one copy into group order, one back: argsort of the concatenated indices is RoI order
    return torch.cat(pieces)[torch.argsort(torch.cat(order))]


def roi_align_grid(features: Tensor, rois: list[Tensor], output_size: int, spatial_scale: float,
                   sampling_ratio: int) -> Tensor:
    """features (N, C, H, W), rois [(R_i, 4) xyxy px] per image -> (sum R_i, C, S, S) float32.

    Equals `torchvision.ops.roi_align(features, rois, S, spatial_scale, sampling_ratio,
    aligned=True)`. sampling_ratio >= 1: that many samples per bin along each axis, for every RoI.
    sampling_ratio 0: adaptive, ceil(roi_h / S) x ceil(roi_w / S) samples per bin for each RoI
    (roi_h, roi_w in feature px), as detectron2's POOLER_SAMPLING_RATIO 0, which its C4 VOC recipe
    uses; RoIs are grouped by grid, one grid_sample per group, see `roi_align_adaptive`. Negative
    values are refused. Samples in float32 (as torchvision's autocast does).
    """
    if sampling_ratio < 0:
        raise ValueError(
            f"roi_align_grid needs sampling_ratio >= 0 (0 = adaptive), got {sampling_ratio}")
    n_img, channels, height, width = features.shape
    n = output_size * sampling_ratio
    counts = [r.shape[0] for r in rois]
    r_max = max(counts, default=0)
    if r_max == 0:
        return features.new_zeros((0, channels, output_size, output_size), dtype=torch.float32)
    if sampling_ratio == 0:
        return roi_align_adaptive(features, rois, output_size, spatial_scale)
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

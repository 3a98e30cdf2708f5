"""frcnn.ops.roi_align: grid_sample RoIAlign against torchvision's roi_align (aligned=True)."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from frcnn.ops.roi_align import adaptive_grid_sizes, roi_align_grid, sample_points


def random_rois(g: torch.Generator, n: int, image_size: float, min_side: float = 1.0) -> torch.Tensor:
    """n boxes (n, 4) xyxy inside a square image: as RPN proposals are, after clipping."""
    xy = torch.rand(n, 2, generator=g) * (image_size - min_side)
    wh = min_side + torch.rand(n, 2, generator=g) * image_size
    return torch.cat((xy, torch.minimum(xy + wh, torch.tensor(image_size))), dim=1)


@pytest.mark.parametrize("sampling_ratio", [1, 2])
def test_values_and_gradients_equal_torchvisions(sampling_ratio):
    g = torch.Generator().manual_seed(0)
    # 3 images of 160 px at stride 16 (10 x 10 features), unequal RoI counts, one image without any
    features = torch.randn(3, 8, 10, 10, generator=g, requires_grad=True)
    rois = [random_rois(g, 7, 160.0), torch.zeros(0, 4), random_rois(g, 12, 160.0)]
    rois[2][0] = torch.tensor([0.0, 0.0, 160.0, 160.0])  # the whole image: samples at the borders
    rois[2][1] = torch.tensor([50.0, 60.0, 50.5, 61.0])  # under a pixel: all samples in one cell
    ours = roi_align_grid(features, rois, 7, 1 / 16, sampling_ratio)
    theirs = roi_align(features, rois, 7, 1 / 16, sampling_ratio, aligned=True)
    assert ours.shape == theirs.shape == (19, 8, 7, 7)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    upstream = torch.randn(theirs.shape, generator=g)
    (grad_ours,) = torch.autograd.grad(ours, features, upstream)
    (grad_theirs,) = torch.autograd.grad(theirs, features, upstream)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-4, atol=1e-4)


def test_sample_points_are_bin_centres_in_half_pixel_shifted_feature_coordinates():
    # a 32 x 16 px RoI at (16, 32) at stride 16 covers feature x in [0.5, 2.5], y in [1.5, 2.5]
    pts = sample_points(torch.tensor([[16.0, 32.0, 48.0, 48.0]]), output_size=2, sampling_ratio=1,
                        spatial_scale=1 / 16)
    assert pts.shape == (1, 2, 2, 2)
    torch.testing.assert_close(pts[0, :, :, 0], torch.tensor([[1.0, 2.0], [1.0, 2.0]]))  # x
    torch.testing.assert_close(pts[0, :, :, 1], torch.tensor([[1.75, 1.75], [2.25, 2.25]]))  # y


@pytest.mark.parametrize("sampling_ratio", [1, 0])
def test_bfloat16_features_are_sampled_in_float32(sampling_ratio):
    g = torch.Generator().manual_seed(1)
    features = torch.randn(1, 4, 8, 8, generator=g)
    rois = [random_rois(g, 5, 128.0)]
    out = roi_align_grid(features.bfloat16(), rois, 7, 1 / 16, sampling_ratio)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, roi_align_grid(features.bfloat16().float(), rois, 7, 1 / 16,
                                                   sampling_ratio))


def test_no_rois_anywhere_gives_an_empty_batch_and_a_negative_sampling_ratio_is_refused():
    features = torch.randn(2, 4, 8, 8)
    for sampling_ratio in (1, 0):
        out = roi_align_grid(features, [torch.zeros(0, 4)] * 2, 7, 1 / 16, sampling_ratio)
        assert out.shape == (0, 4, 7, 7)
    with pytest.raises(ValueError, match="sampling_ratio >= 0"):
        roi_align_grid(features, [torch.zeros(1, 4)] * 2, 7, 1 / 16, -1)


# RoIs in a 400 x 320 px image at stride 16 (25 x 20 feature px), chosen so that the adaptive grid
# differs along y and x, in both directions, and some sides are not whole multiples of S: a grid
# with h and w swapped, or floor instead of ceil, changes the values
SPECIAL_ROIS = torch.tensor([
    [0.0, 0.0, 400.0, 320.0],  # the whole image (25 x 20): samples reach the borders
    [100.0, 0.0, 132.0, 320.0],  # tall (2 x 20): more samples along y than along x
    [0.0, 150.0, 400.0, 166.0],  # wide (25 x 1): more samples along x than along y
    [50.0, 60.0, 50.5, 61.0],  # under a feature cell: ceil gives 1 sample per bin, floor 0
    [200.0, 100.0, 200.0, 180.0],  # zero width: no samples, bins of 0 (torchvision's 0 / 1)
])


@pytest.mark.parametrize(("output_size", "expected"), [
    (7, [[3, 4], [3, 1], [1, 4], [1, 1], [1, 0]]),
    (14, [[2, 2], [2, 1], [1, 2], [1, 1], [1, 0]]),
])
def test_adaptive_grid_is_ceil_of_the_roi_side_over_the_output_size_per_axis(output_size, expected):
    grids = adaptive_grid_sizes(SPECIAL_ROIS, output_size, spatial_scale=1 / 16)
    assert grids.tolist() == expected  # (grid_h, grid_w)


def test_sample_points_take_separate_ratios_along_y_and_x():
    # a 32 x 16 px RoI at (16, 32) at stride 16 covers feature x in [0.5, 2.5], y in [1.5, 2.5]
    pts = sample_points(torch.tensor([[16.0, 32.0, 48.0, 48.0]]), output_size=1,
                        sampling_ratio=(1, 2), spatial_scale=1 / 16)
    assert pts.shape == (1, 1, 2, 2)
    torch.testing.assert_close(pts[0, :, :, 0], torch.tensor([[1.0, 2.0]]))  # x: 2 samples
    torch.testing.assert_close(pts[0, :, :, 1], torch.tensor([[2.0, 2.0]]))  # y: 1 sample


@pytest.mark.parametrize("output_size", [7, 14])
def test_adaptive_sampling_values_and_gradients_equal_torchvisions(output_size):
    g = torch.Generator().manual_seed(2)
    # 3 images of 400 x 320 px at stride 16: 15 RoIs, none, 10 RoIs
    features = torch.randn(3, 8, 20, 25, generator=g, requires_grad=True)
    rois = [torch.cat((SPECIAL_ROIS[:3], random_rois(g, 12, 320.0))), torch.zeros(0, 4),
            torch.cat((random_rois(g, 4, 320.0, min_side=0.2), SPECIAL_ROIS[3:],
                       random_rois(g, 4, 320.0)))]
    grids = {tuple(s) for s in adaptive_grid_sizes(torch.cat(rois), output_size, 1 / 16).tolist()}
    assert len(grids) >= 5, grids  # several groups, each its own grid_sample, put back in order
    assert any(h > w > 0 for h, w in grids) and any(w > h > 0 for h, w in grids), grids
    ours = roi_align_grid(features, rois, output_size, 1 / 16, 0)
    theirs = roi_align(features, rois, output_size, 1 / 16, 0, aligned=True)
    assert ours.shape == theirs.shape == (25, 8, output_size, output_size)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert not ours[20].any()  # the zero-width RoI: 15 in image 0, then 4 random, a tiny one
    upstream = torch.randn(theirs.shape, generator=g)
    (grad_ours,) = torch.autograd.grad(ours, features, upstream)
    (grad_theirs,) = torch.autograd.grad(theirs, features, upstream)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-4, atol=1e-4)

"""frcnn.model.roi_align: grid_sample RoIAlign against torchvision's roi_align (aligned=True)."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from frcnn.ops.roi_align import roi_align_grid, sample_points


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


def test_bfloat16_features_are_sampled_in_float32():
    g = torch.Generator().manual_seed(1)
    features = torch.randn(1, 4, 8, 8, generator=g)
    rois = [random_rois(g, 5, 128.0)]
    out = roi_align_grid(features.bfloat16(), rois, 7, 1 / 16, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, roi_align_grid(features.bfloat16().float(), rois, 7, 1 / 16, 1))


def test_no_rois_anywhere_gives_an_empty_batch_and_adaptive_sampling_is_refused():
    features = torch.randn(2, 4, 8, 8)
    assert roi_align_grid(features, [torch.zeros(0, 4)] * 2, 7, 1 / 16, 1).shape == (0, 4, 7, 7)
    with pytest.raises(ValueError, match="sampling_ratio >= 1"):
        roi_align_grid(features, [torch.zeros(1, 4)] * 2, 7, 1 / 16, 0)

"""frcnn.anchors: base anchors (against torchvision's AnchorGenerator), the grid, its order."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import (
    AnchorGenerator as TVAnchorGenerator,
)
from torchvision.models.detection.image_list import ImageList

from frcnn.ops.anchors import (
    AnchorGenerator,
    anchor_scales_px,
    base_anchors,
    grid_anchors,
)


def test_base_anchors_by_hand_ratio_is_h_over_w_and_area_is_scale_squared():
    base = base_anchors((16.0,), (1.0, 4.0, 0.25))
    # r = h / w: w = s / sqrt(r), h = s * sqrt(r); centred on (0, 0)
    assert base.tolist() == [[-8.0, -8.0, 8.0, 8.0], [-4.0, -16.0, 4.0, 16.0], [-16.0, -4.0, 16.0, 4.0]]
    base = base_anchors((24.0, 48.0, 96.0, 192.0), (0.5, 1.0, 2.0))
    w, h = base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]
    scales = torch.tensor([24.0, 48.0, 96.0, 192.0]).repeat(3)  # ratio-major order
    ratios = torch.tensor([0.5, 1.0, 2.0]).repeat_interleave(4)
    torch.testing.assert_close(torch.sqrt(w * h), scales)
    torch.testing.assert_close(h / w, ratios)


@pytest.mark.parametrize("scales, ratios", [((128.0, 256.0, 512.0), (0.5, 1.0, 2.0)),
                                            ((24.0, 48.0, 96.0, 192.0), (0.5, 1.0, 2.0)),
                                            ((32.0, 45.0), (0.3, 1.0, 3.0))])
def test_base_anchors_equal_torchvisions_up_to_its_rounding(scales, ratios):
    ours = base_anchors(scales, ratios)
    # torchvision's generate_anchors uses the same convention (aspect ratio = h / w, area s^2) and
    # the same ratio-major order, but rounds the corners to whole pixels; we do not round.
    theirs = TVAnchorGenerator().generate_anchors(list(scales), list(ratios))
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 0.5
    torch.testing.assert_close(ours.round(), theirs)


def test_grid_equals_torchvisions_shifted_by_half_a_stride():
    scales, ratios, stride, (h, w) = (32.0, 64.0), (0.5, 1.0, 2.0), 16, (5, 7)
    ours = AnchorGenerator(scales, ratios, stride)((h, w), torch.device("cpu"))
    tv = TVAnchorGenerator(sizes=(scales,), aspect_ratios=(ratios,))
    tv.cell_anchors = [base_anchors(scales, ratios)]  # compare the grids, not the rounding
    images = ImageList(torch.zeros(1, 3, h * stride, w * stride), [(h * stride, w * stride)])
    theirs = tv(images, [torch.zeros(1, 8, h, w)])[0]
    # torchvision puts cell (i, j)'s anchors at (j * stride, i * stride); we centre them on the
    # cell, ((j + 0.5) * stride, (i + 0.5) * stride). Same order (H, W, A).
    torch.testing.assert_close(ours, theirs + stride / 2)


def test_a_20x15_map_with_9_anchors_gives_2700_anchors():
    gen = AnchorGenerator((128.0, 256.0, 512.0), (0.5, 1.0, 2.0), stride=16)
    assert gen.num_anchors == 9
    anchors = gen((15, 20), torch.device("cpu"))
    assert anchors.shape == (2700, 4)
    assert anchors.dtype == torch.float32


def test_grid_order_is_h_w_a_and_centres_are_cell_centres():
    base = base_anchors((10.0, 20.0), (1.0,))   # A = 2
    anchors = grid_anchors(base, (3, 4), stride=8)
    assert anchors.shape == (3 * 4 * 2, 4)
    for i in range(3):
        for j in range(4):
            for a in range(2):
                box = anchors[(i * 4 + j) * 2 + a]
                assert ((box[0] + box[2]) / 2).item() == (j + 0.5) * 8
                assert ((box[1] + box[3]) / 2).item() == (i + 0.5) * 8
                assert (box[2] - box[0]).item() == (10.0, 20.0)[a]
    assert anchors[0].tolist() == [-1.0, -1.0, 9.0, 9.0]


def test_scales_in_cells_are_multiplied_by_the_stride():
    assert anchor_scales_px((2, 4, 6), "cells", 32) == (64.0, 128.0, 192.0)
    assert anchor_scales_px((24, 48), "px", 32) == (24.0, 48.0)


def test_generator_caches_per_size():
    gen = AnchorGenerator((32.0,), (1.0,), stride=16)
    a = gen((4, 4), torch.device("cpu"))
    assert gen((4, 4), torch.device("cpu")) is a
    assert gen((4, 5), torch.device("cpu")).shape == (20, 4)
    assert math.isclose(a[0, 2].item(), 8 + 16)

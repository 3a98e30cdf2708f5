"""frcnn.boxes: box coding (against torchvision's BoxCoder), clipping, small-box removal."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder
from torchvision.ops import remove_small_boxes as tv_remove_small_boxes

from frcnn.ops.boxes import (
    DEFAULT_SCALE_CLAMP,
    BoxCoder,
    box_area,
    box_iou,
    clip_boxes,
    remove_small_boxes,
)


def random_boxes(n: int, generator: torch.Generator, size: float = 200.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * size
    wh = torch.rand(n, 2, generator=generator) * size / 2 + 1.0
    return torch.cat((xy, xy + wh), dim=1)


def test_box_area_and_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 40.0]])
    assert box_area(b).tolist() == [100.0, 100.0, 200.0]
    # 5x5 overlap / (100 + 100 - 25)
    assert box_iou(a, b)[0].tolist() == pytest.approx([25 / 175, 1.0, 0.0])


def test_degenerate_box_has_zero_iou_not_nan():
    flat = torch.tensor([[3.0, 3.0, 3.0, 8.0]])  # zero width
    iou = box_iou(flat, torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    assert torch.isfinite(iou).all() and iou.item() == 0.0
    assert box_area(flat).item() == 0.0


def test_encode_by_hand():
    anchor = torch.tensor([[0.0, 0.0, 10.0, 10.0]])   # centre (5, 5), 10 x 10
    target = torch.tensor([[5.0, 5.0, 15.0, 25.0]])   # centre (10, 15), 10 x 20
    assert BoxCoder().encode(target, anchor)[0].tolist() == pytest.approx([0.5, 1.0, 0.0, math.log(2)])
    weighted = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode(target, anchor)[0]
    assert weighted.tolist() == pytest.approx([5.0, 10.0, 0.0, 5 * math.log(2)])
    # a box encoded against itself is the zero delta
    assert BoxCoder().encode(anchor, anchor).abs().max().item() == 0.0


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_and_decode_agree_with_torchvision(weights):
    g = torch.Generator().manual_seed(0)
    refs, targets = random_boxes(64, g), random_boxes(64, g)
    ours, theirs = BoxCoder(weights), TVBoxCoder(weights)
    deltas = ours.encode(targets, refs)
    torch.testing.assert_close(deltas, theirs.encode_single(targets, refs))
    # decode with C = 3 boxes per reference (the second stage's per-class deltas)
    multi = torch.randn(64, 12, generator=g)
    torch.testing.assert_close(ours.decode(multi, refs), theirs.decode_single(multi, refs))


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_decode_inverts_encode(weights):
    g = torch.Generator().manual_seed(1)
    refs, targets = random_boxes(100, g), random_boxes(100, g)
    coder = BoxCoder(weights)
    torch.testing.assert_close(coder.decode(coder.encode(targets, refs), refs), targets,
                               rtol=1e-5, atol=1e-3)
    deltas = torch.randn(100, 4, generator=g)
    torch.testing.assert_close(coder.encode(coder.decode(deltas, refs), refs), deltas,
                               rtol=1e-4, atol=1e-4)


def test_decode_clamps_huge_size_deltas_to_finite_boxes():
    ref = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    huge = torch.tensor([[0.0, 0.0, 1e4, 1e4]])  # exp(1e4) is inf without the clamp
    box = BoxCoder().decode(huge, ref)
    assert torch.isfinite(box).all()
    # the size is clamped to exp(log(1000 / 16)) = 62.5 times the reference: 1000 px, centred
    assert box[0].tolist() == pytest.approx([8 - 500, 8 - 500, 8 + 500, 8 + 500])
    assert DEFAULT_SCALE_CLAMP == pytest.approx(math.log(1000 / 16))
    torch.testing.assert_close(box, TVBoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(huge, ref))
    # the clamp is on dw / ww: with weight 5 it binds at dw = 5 * log(62.5)
    assert torch.isfinite(BoxCoder((10.0, 10.0, 5.0, 5.0)).decode(huge, ref)).all()
    # very negative deltas shrink towards a point but stay finite
    assert torch.isfinite(BoxCoder().decode(-huge, ref)).all()


def test_decode_of_no_boxes_keeps_the_shape():
    # an image with no proposals: (0, 4 * C) deltas -> (0, 4 * C) boxes, not an error
    assert BoxCoder().decode(torch.zeros(0, 12), torch.zeros(0, 4)).shape == (0, 12)
    assert BoxCoder().encode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)


def test_clip_boxes_by_hand_and_per_image_sizes():
    boxes = torch.tensor([[-5.0, -5.0, 50.0, 30.0], [10.0, 10.0, 120.0, 90.0], [5.0, 5.0, 8.0, 9.0]])
    # height 40, width 100
    clipped = clip_boxes(boxes, 40, 100)
    assert clipped.tolist() == [[0.0, 0.0, 50.0, 30.0], [10.0, 10.0, 100.0, 40.0], [5.0, 5.0, 8.0, 9.0]]
    # a batch (N, k, 4) with one (height, width) per image as (N, 1) tensors
    batch = torch.stack((boxes, boxes))
    sizes = torch.tensor([[40.0, 100.0], [20.0, 60.0]])
    out = clip_boxes(batch, sizes[:, 0:1], sizes[:, 1:2])
    assert out[0].tolist() == clipped.tolist()
    assert out[1].tolist() == [[0.0, 0.0, 50.0, 20.0], [10.0, 10.0, 60.0, 20.0], [5.0, 5.0, 8.0, 9.0]]


def test_remove_small_boxes_by_hand_and_against_torchvision():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0],   # 10 x 10
                          [0.0, 0.0, 0.5, 10.0],    # too narrow
                          [0.0, 0.0, 10.0, 0.5],    # too flat
                          [0.0, 0.0, 1.0, 1.0],     # exactly the minimum: kept
                          [5.0, 5.0, 5.0, 5.0]])    # a point
    assert remove_small_boxes(boxes, 1.0).tolist() == [0, 3]
    g = torch.Generator().manual_seed(2)
    rand = random_boxes(200, g, size=20.0)
    assert remove_small_boxes(rand, 6.0).tolist() == tv_remove_small_boxes(rand, 6.0).tolist()

"""Anchor coverage on boxes whose best-anchor IoU is known by hand."""

import numpy as np
import pytest
import torch

from frcnn.tools.anchor_analysis import (
    analyze_coco,
    best_anchor_iou,
    coverage,
    factorise,
    kmeans_1d,
    kmeans_iou,
    shape_iou,
)


def test_best_anchor_iou_on_a_known_grid():
    # 64x64 image, stride 16, one 32x32 anchor per cell: centres 8, 24, 40, 56; only the anchors
    # centred at 24 or 40 lie inside the image, i.e. [8, 8, 40, 40] and its shifts by 16.
    gt = torch.tensor([[8.0, 8.0, 40.0, 40.0],     # exactly an anchor
                       [16.0, 16.0, 32.0, 32.0],   # 16x16 inside [8,8,40,40]: 256 / 1024
                       [0.0, 0.0, 16.0, 16.0]])    # corner: 8x8 overlap, 64 / (256 + 1024 - 64)
    iou = best_anchor_iou(gt, (64, 64), (32.0,), (1.0,), stride=16)
    assert iou.tolist() == pytest.approx([1.0, 0.25, 64 / 1216])
    # keeping border-crossing anchors, the corner box meets [-8, -8, 24, 24]: 256 / 1024
    iou_all = best_anchor_iou(gt, (64, 64), (32.0,), (1.0,), stride=16, border_tolerance=-1)
    assert iou_all[2].item() == pytest.approx(0.25)


def test_coverage_fractions_and_size_buckets():
    best = np.array([0.9, 0.5, 0.75, 0.2])
    areas = np.array([20.0 ** 2, 20.0 ** 2, 50.0 ** 2, 200.0 ** 2])
    cov = coverage(best, areas, pos_thresh=0.7)
    assert cov.num_gt == 4 and cov.fraction_above_pos == pytest.approx(0.5)
    assert cov.per_bucket["small"]["fraction_above_pos_thresh"] == pytest.approx(0.5)
    assert cov.per_bucket["medium"]["num_gt"] == 1
    assert cov.per_bucket["large"]["mean_best_iou"] == pytest.approx(0.2)
    assert sum(cov.histogram[1]) == 4


def test_shape_iou_of_centred_boxes():
    got = shape_iou(np.array([[10.0, 10.0]]), np.array([[10.0, 10.0], [20.0, 5.0]]))
    assert got[0].tolist() == pytest.approx([1.0, 50 / 150])


def test_kmeans_recovers_two_well_separated_shapes():
    rng = np.random.default_rng(0)
    small = np.array([20.0, 40.0]) * rng.uniform(0.95, 1.05, (50, 2))
    large = np.array([120.0, 60.0]) * rng.uniform(0.95, 1.05, (50, 2))
    centres = kmeans_iou(np.concatenate([small, large]), k=2)
    assert centres[0] == pytest.approx([20, 40], rel=0.05)
    assert centres[1] == pytest.approx([120, 60], rel=0.05)


def test_factorise_into_scales_and_ratios():
    centres = np.array([[32.0, 32.0], [64.0, 64.0], [128.0, 128.0]])
    scales, ratios = factorise(centres, num_scales=1, num_ratios=1)
    assert scales == [64.0] and ratios == [1.0]


def test_analyze_coco_resizes_boxes_like_the_model_and_suggests_better_anchors():
    # one 128x128 image upscaled to 256: a 16x16 GT becomes 32x32 at (32, 32) = exactly the
    # 32-px anchor of cell (1, 1) at stride 16, centred at (40, 40) -> [24, 24, 56, 56]
    gt = {"images": [{"id": 1, "width": 128, "height": 128}],
          "annotations": [{"image_id": 1, "bbox": [12.0, 12.0, 16.0, 16.0], "iscrowd": 0},
                          {"image_id": 1, "bbox": [60.0, 60.0, 30.0, 30.0], "iscrowd": 1}]}
    out = analyze_coco(gt, (32.0,), (1.0,), stride=16, min_size=256, max_size=256,
                       pos_thresh=0.7, border_tolerance=0)
    assert out["configured"]["num_gt"] == 1  # the crowd (difficult) box is not counted
    assert out["configured"]["mean_best_iou"] == pytest.approx(1.0)
    assert out["suggested"]["scales_px"] == [32.0] and out["suggested"]["ratios"] == [1.0]


def test_kmeans_1d_finds_two_groups():
    values = np.array([1.0, 1.1, 0.9, 5.0, 5.2, 4.8])
    assert kmeans_1d(values, 2) == pytest.approx([1.0, 5.0])

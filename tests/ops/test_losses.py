"""frcnn.losses: the two stages' losses on hand-computed tensors, and where their gradients go."""

from __future__ import annotations

import math

import pytest
import torch

from frcnn.ops.losses import fast_rcnn_loss, rpn_loss


def smooth_l1(x: float, beta: float) -> float:
    return 0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta


def test_rpn_loss_by_hand():
    objectness = torch.tensor([0.0, 0.0, 2.0, -1.0])  # 4 sampled anchors
    labels = torch.tensor([1, 0, 1, 0])
    pred = torch.zeros(4, 4)
    target = torch.tensor([[0.5, 0.0, 0.0, 0.05], [9.0, 9.0, 9.0, 9.0],   # negative: ignored
                           [0.0, -0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    beta, lam = 1 / 9, 5.0
    cls, reg = rpn_loss(objectness, pred, labels, target, lam, beta)
    bce = [math.log(2), math.log(2), math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1))]
    assert cls.item() == pytest.approx(sum(bce) / 4)
    # regression summed over the positives' 4 deltas, divided by the 4 sampled anchors
    l1 = smooth_l1(0.5, beta) + smooth_l1(0.05, beta) + smooth_l1(-0.1, beta)
    assert reg.item() == pytest.approx(lam * l1 / 4)


def test_rpn_negatives_get_no_regression_gradient_and_lambda_scales_linearly():
    objectness = torch.zeros(3, requires_grad=True)
    pred = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    labels = torch.tensor([1, 0, 0])
    target = torch.ones(3, 4)
    cls, reg = rpn_loss(objectness, pred, labels, target, 1.0, 1.0)
    (cls + reg).backward()
    assert pred.grad[1:].abs().sum().item() == 0.0 and pred.grad[0].abs().sum().item() > 0
    _, reg10 = rpn_loss(objectness, pred, labels, target, 10.0, 1.0)
    assert reg10.item() == pytest.approx(10 * reg.item())


def test_rpn_loss_without_positives_is_finite_with_zero_box_term():
    # an image with no GT boxes: every sampled anchor is negative
    cls, reg = rpn_loss(torch.zeros(8), torch.randn(8, 4), torch.zeros(8, dtype=torch.int64),
                        torch.zeros(8, 4), 5.0, 1 / 9)
    assert cls.item() == pytest.approx(math.log(2))
    assert reg.item() == 0.0
    # and no anchors sampled at all: both terms 0, not NaN
    cls, reg = rpn_loss(torch.zeros(0), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                        torch.zeros(0, 4), 5.0, 1 / 9)
    assert cls.item() == 0.0 and reg.item() == 0.0


def test_fast_rcnn_loss_by_hand():
    # K = 2 classes (+ background), 3 RoIs: background, class 2, class 1
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2, 1])
    deltas = torch.zeros(3, 12)
    deltas[1, 8:12] = torch.tensor([0.2, 0.0, 0.0, 0.0])     # class 2's regressor of RoI 1
    deltas[1, 4:8] = 100.0                                    # class 1's: not RoI 1's class, unused
    deltas[2, 4:8] = torch.tensor([0.0, 0.0, -1.0, 0.0])      # class 1's regressor of RoI 2
    target = torch.tensor([[7.0, 7.0, 7.0, 7.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    cls, reg = fast_rcnn_loss(logits, deltas, labels, target, 1.0, 1.0)
    ce = [-math.log(math.exp(2) / (math.exp(2) + 2)), math.log(3),
          -math.log(math.e / (math.e + 2))]
    assert cls.item() == pytest.approx(sum(ce) / 3)
    assert reg.item() == pytest.approx((smooth_l1(0.2, 1.0) + smooth_l1(1.0, 1.0)) / 3)
    torch.testing.assert_close(cls, torch.nn.functional.cross_entropy(logits, labels))


def test_fast_rcnn_only_the_gt_class_regressor_of_foreground_rois_gets_gradient():
    logits = torch.zeros(3, 3, requires_grad=True)
    deltas = torch.randn(3, 12, generator=torch.Generator().manual_seed(0), requires_grad=True)
    labels = torch.tensor([0, 2, 1])
    cls, reg = fast_rcnn_loss(logits, deltas, labels, torch.zeros(3, 4), 1.0, 1 / 9)
    reg.backward()
    nonzero = (deltas.grad.abs() > 0).reshape(3, 3, 4).any(dim=2)
    assert nonzero.tolist() == [[False, False, False], [False, False, True], [False, True, False]]


def test_fast_rcnn_class_agnostic_regression_equals_the_per_class_loss_on_shared_deltas():
    """(R, 4) deltas are trained exactly as per-class deltas that repeat them for every class."""
    g = torch.Generator().manual_seed(1)
    logits, shared = torch.randn(4, 3, generator=g), torch.randn(4, 4, generator=g)
    labels, target = torch.tensor([0, 2, 1, 2]), torch.randn(4, 4, generator=g)
    agnostic = fast_rcnn_loss(logits, shared, labels, target, 2.0, 1 / 9)
    per_class = fast_rcnn_loss(logits, shared.repeat(1, 3), labels, target, 2.0, 1 / 9)
    torch.testing.assert_close(agnostic, per_class)
    fg = labels > 0
    expected = torch.nn.functional.smooth_l1_loss(shared[fg], target[fg], beta=1 / 9,
                                                  reduction="sum") / 4
    torch.testing.assert_close(agnostic[1], 2.0 * expected)


def test_fast_rcnn_loss_all_background_is_finite_with_zero_box_term():
    cls, reg = fast_rcnn_loss(torch.randn(5, 4), torch.randn(5, 16), torch.zeros(5, dtype=torch.int64),
                              torch.full((5, 4), float("inf")), 1.0, 1 / 9)  # bg targets unused
    assert torch.isfinite(cls) and reg.item() == 0.0


def test_beta_zero_is_plain_l1():
    cls, reg = rpn_loss(torch.zeros(1), torch.zeros(1, 4), torch.tensor([1]),
                        torch.tensor([[0.01, -0.02, 0.0, 0.03]]), 1.0, 0.0)
    assert reg.item() == pytest.approx(0.06)

"""frcnn.matching: `match` against torchvision's Matcher, `sample_balanced` against its sampler."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher

from frcnn.ops.matching import (
    BELOW_LOW_THRESHOLD,
    BETWEEN_THRESHOLDS,
    match,
    sample_balanced,
)


def test_sentinels_are_torchvisions():
    assert (BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS) == (Matcher.BELOW_LOW_THRESHOLD,
                                                         Matcher.BETWEEN_THRESHOLDS)


def test_match_by_hand():
    # 2 GT boxes x 5 candidates
    iou = torch.tensor([[0.9, 0.5, 0.1, 0.0, 0.2],
                        [0.2, 0.6, 0.4, 0.0, 0.69]])
    # thresholds 0.7 / 0.3: 0 -> GT 0; 1 (0.6) ignored; 2 (0.4) ignored; 3 negative; 4 (0.69) ignored
    assert match(iou, 0.7, 0.3, allow_low_quality=False).tolist() == [0, -2, -2, -1, -2]
    # with the best-anchor rule GT 1's best candidate (4, IoU 0.69) becomes positive
    assert match(iou, 0.7, 0.3, allow_low_quality=True).tolist() == [0, -2, -2, -1, 1]
    # the threshold is inclusive (>=), as in torchvision
    assert match(torch.tensor([[0.7, 0.3, 0.2999]]), 0.7, 0.3, False).tolist() == [0, -2, -1]


def test_low_quality_rule_keeps_ties_and_uses_the_candidates_own_best_gt():
    iou = torch.tensor([[0.4, 0.4, 0.1],
                        [0.5, 0.1, 0.2]])
    # GT 0's best (0.4) is tied by candidates 0 and 1; candidate 0's own best GT is GT 1 (0.5)
    # (torchvision's rule: a rescued candidate is matched to its highest-IoU GT)
    assert match(iou, 0.7, 0.3, allow_low_quality=True).tolist() == [1, 0, -1]


def test_no_gt_boxes_makes_every_candidate_negative():
    out = match(torch.zeros(0, 6), 0.7, 0.3, allow_low_quality=True)
    assert out.tolist() == [-1] * 6 and out.dtype == torch.int64


def test_a_gt_that_overlaps_nothing_rescues_no_candidate():
    # torchvision's Matcher would mark every IoU-0 candidate as this GT's "best" and make it
    # positive; we do not (documented deviation): a GT with best IoU 0 gets no match.
    iou = torch.tensor([[0.0, 0.0, 0.0], [0.8, 0.1, 0.0]])
    assert match(iou, 0.7, 0.3, allow_low_quality=True).tolist() == [1, -1, -1]


@pytest.mark.parametrize("allow_low_quality", [False, True])
@pytest.mark.parametrize("high, low", [(0.7, 0.3), (0.5, 0.0), (0.5, 0.1), (0.5, 0.5)])
def test_match_equals_torchvisions_matcher_on_random_iou_with_ties(allow_low_quality, high, low):
    g = torch.Generator().manual_seed(0)
    matcher = Matcher(high, low, allow_low_quality_matches=allow_low_quality)
    for trial in range(50):
        num_gt = int(torch.randint(1, 6, (1,), generator=g))
        num = int(torch.randint(1, 40, (1,), generator=g))
        # values on a 0.1 grid so that ties (per GT and per candidate, and with the thresholds) occur
        iou = torch.randint(0, 11, (num_gt, num), generator=g).float() / 10
        iou[:, 0] = iou[:, 0].clamp(min=0.1)  # every GT overlaps something (see the test above)
        assert torch.equal(match(iou, high, low, allow_low_quality), matcher(iou.clone())), trial


@pytest.mark.parametrize("num_pos, num_neg, batch, fraction", [
    (40, 300, 64, 0.25),   # plenty of both
    (3, 300, 64, 0.5),     # few positives: negatives fill the rest
    (100, 10, 64, 0.5),    # few negatives
    (0, 500, 256, 0.5),    # an image with no objects: all negatives
    (5, 5, 256, 0.5),      # fewer candidates than the batch
])
def test_sample_counts_equal_torchvisions(num_pos, num_neg, batch, fraction):
    g = torch.Generator().manual_seed(0)
    labels = torch.cat((torch.ones(num_pos, dtype=torch.int64) * 2, torch.zeros(num_neg, dtype=torch.int64),
                        -torch.ones(20, dtype=torch.int64)))
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    pos, neg = sample_balanced(labels, batch, fraction, generator=g)
    tv_pos, tv_neg = BalancedPositiveNegativeSampler(batch, fraction)([labels])
    assert pos.numel() == int(tv_pos[0].sum()) and neg.numel() == int(tv_neg[0].sum())
    assert pos.numel() <= int(batch * fraction)
    assert (labels[pos] >= 1).all() and (labels[neg] == 0).all()   # ignored (-1) never sampled
    assert pos.unique().numel() == pos.numel() and neg.unique().numel() == neg.numel()
    assert pos.dtype == neg.dtype == torch.int64


def test_sampling_is_uniform_like_torchvisions():
    # 40 positives, 16 drawn per batch: each is drawn with probability 0.4 (std 0.022 over 400
    # draws); torchvision's sampler (other random numbers) gives the same frequencies.
    labels = torch.cat((torch.ones(40, dtype=torch.int64), torch.zeros(200, dtype=torch.int64)))
    ours, theirs = torch.zeros(240), torch.zeros(240)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    tv = BalancedPositiveNegativeSampler(64, 0.25)
    for _ in range(400):
        pos, neg = sample_balanced(labels, 64, 0.25, generator=g)
        ours[pos] += 1
        ours[neg] += 1
        tv_pos, tv_neg = tv([labels])
        theirs += tv_pos[0].float() + tv_neg[0].float()
    for freq in (ours / 400, theirs / 400):
        assert (freq[:40] - 0.4).abs().max() < 0.1      # 16 / 40 positives
        assert (freq[40:] - 0.24).abs().max() < 0.1     # 48 / 200 negatives
    assert abs((ours[:40] / 400).mean() - (theirs[:40] / 400).mean()) < 1e-6  # exact: counts fixed


def test_sampling_is_reproducible_with_a_seeded_generator():
    labels = torch.randint(-1, 2, (500,), generator=torch.Generator().manual_seed(1))
    a = sample_balanced(labels, 64, 0.5, generator=torch.Generator().manual_seed(7))
    b = sample_balanced(labels, 64, 0.5, generator=torch.Generator().manual_seed(7))
    c = sample_balanced(labels, 64, 0.5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])

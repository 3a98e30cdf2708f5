"""frcnn.model.rpn against torchvision's RegionProposalNetwork as an oracle, plus hand-computed cases.

The existing RPN tests use one anchor per cell, zeroed heads and square images, where a wrong
tensor layout or a swapped height/width cannot show. Here both RPNs get the SAME head weights
(random, non-zero), 3 scales x 3 ratios per cell, a 5 x 8 feature map of an 80 x 128 image and a
batch of two images of different sizes, and we compare, per anchor in (H, W, A) order: objectness,
decoded boxes, labels and matched GT; then proposals and losses.

What is neutralised to make the two comparable (see the module docstrings of frcnn.anchors,
frcnn.losses and torchvision/models/detection/rpn.py):
- anchors: torchvision centres cell (i, j) at (j * stride, i * stride) and rounds its base anchors;
  ours centres it at ((j + 0.5) * stride, ...) unrounded. One test checks that this is the only
  difference; the other tests feed torchvision our anchor tensor, so IoU ties break identically.
- border: torchvision keeps anchors crossing the image border; we set `border_tolerance=-1` for the
  comparisons and check our border rule separately (by hand, and against torchvision restricted
  to the inside anchors).
- sampling: `batch_size_per_image` larger than the number of anchors, so every labelled anchor
  is sampled in both and the losses are deterministic.
- loss: both divide the BCE sum and the smooth-L1 sum (beta 1/9) by the number of sampled
  anchors; ours multiplies the box loss by `loss_lambda`, set to 1 (and checked at 5 by hand).
- min size 1e-3 (torchvision's fixed value), score threshold 0 (a no-op on sigmoid scores), one
  feature level (so its per-level top-n and NMS are per image, like ours).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork as TVRegionProposalNetwork
from torchvision.models.detection.rpn import RPNHead as TVRPNHead
from torchvision.ops import box_iou

from frcnn.ops.anchors import AnchorGenerator, base_anchors, grid_anchors
from frcnn.config import config_from_dict
from frcnn.model.build import rpn_arguments
from frcnn.model.rpn import RegionProposalNetwork, RPNHead

CHANNELS = 8
SCALES = (16.0, 32.0, 64.0)
RATIOS = (0.5, 1.0, 2.0)
STRIDE = 16
FEATURE_SIZE = (5, 8)                     # (H, W): not square, H != W catches swapped axes
IMAGE_SIZES = [(80, 128), (70, 100)]      # (h, w) per image; the second is padded to 80 x 128
# GT near the right and bottom borders of each image, where a swapped h/w clips or ignores wrongly;
# the last of image 0 is close to the 32 px anchor of cell (1, 3) (IoU 0.94), positive by threshold
GT_BOXES = [torch.tensor([[90.0, 40.0, 127.0, 79.0], [5.0, 5.0, 40.0, 30.0], [50.0, 20.0, 80.0, 70.0],
                          [40.5, 8.5, 72.5, 40.5]]),
            torch.tensor([[60.0, 30.0, 99.0, 69.0], [10.0, 10.0, 30.0, 50.0]])]
# large enough that every labelled anchor (M = 5 * 8 * 9 = 360 per image) is sampled
ALL_ANCHORS = 100_000


class FixedAnchors(nn.Module):
    """Stands in for torchvision's AnchorGenerator: our anchors, the same tensor for every image."""

    def __init__(self, generator: AnchorGenerator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, images: ImageList, features: list[torch.Tensor]) -> list[torch.Tensor]:
        anchors = self.generator(tuple(features[0].shape[-2:]), features[0].device)
        return [anchors for _ in images.image_sizes]


def make_pair(seed: int = 0, weight_std: float = 0.15, **overrides
              ) -> tuple[RegionProposalNetwork, TVRegionProposalNetwork]:
    """Ours and torchvision's RPN with identical random head weights and comparable settings."""
    torch.manual_seed(seed)
    generator = AnchorGenerator(SCALES, RATIOS, STRIDE)
    k = generator.num_anchors
    tv_head = TVRPNHead(CHANNELS, k)
    with torch.no_grad():
        # non-zero weights AND biases: zeroed heads hide any permutation of the outputs
        for p in tv_head.parameters():
            p.normal_(0.0, weight_std)
    head = RPNHead(CHANNELS, CHANNELS, k)   # torchvision's hidden width is the input width
    with torch.no_grad():
        for ours, theirs in ((head.conv, tv_head.conv[0][0]), (head.objectness, tv_head.cls_logits),
                             (head.deltas, tv_head.bbox_pred)):
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)
    s = dict(pos_iou_thresh=0.7, neg_iou_thresh=0.3, batch_size_per_image=ALL_ANCHORS,
             positive_fraction=0.5, border_tolerance=-1.0, nms_thresh=0.7,
             pre_nms_top_n_train=300, pre_nms_top_n_test=200, post_nms_top_n_train=100,
             post_nms_top_n_test=50, min_box_size=1e-3, loss_lambda=1.0, smooth_l1_beta=1.0 / 9.0)
    s.update(overrides)
    ours = RegionProposalNetwork(head, generator, **s)
    theirs = TVRegionProposalNetwork(
        FixedAnchors(generator), tv_head, fg_iou_thresh=s["pos_iou_thresh"],
        bg_iou_thresh=s["neg_iou_thresh"], batch_size_per_image=s["batch_size_per_image"],
        positive_fraction=s["positive_fraction"],
        pre_nms_top_n={"training": s["pre_nms_top_n_train"], "testing": s["pre_nms_top_n_test"]},
        post_nms_top_n={"training": s["post_nms_top_n_train"], "testing": s["post_nms_top_n_test"]},
        nms_thresh=s["nms_thresh"], score_thresh=0.0)
    return ours, theirs


def features(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, CHANNELS, *FEATURE_SIZE, generator=torch.Generator().manual_seed(seed))


def image_list() -> ImageList:
    return ImageList(torch.zeros(2, 3, 80, 128), IMAGE_SIZES)


def targets() -> list[dict[str, torch.Tensor]]:
    return [{"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64)} for b in GT_BOXES]


def spy(monkeypatch: pytest.MonkeyPatch, obj: object, method: str) -> list[tuple]:
    """Record (args, result) of every call of obj.method, calling through to the original."""
    calls: list[tuple] = []
    original = getattr(obj, method)

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append((args, result))
        return result

    monkeypatch.setattr(obj, method, wrapper)
    return calls


def run_both(monkeypatch: pytest.MonkeyPatch, train: bool, **overrides):
    """Forward both RPNs on the same batch; return their outputs and what the spies recorded."""
    ours, theirs = make_pair(**overrides)
    ours.train(train)
    theirs.train(train)
    ours_propose = spy(monkeypatch, ours, "propose")
    ours_assign = spy(monkeypatch, ours, "assign_targets")
    tv_filter = spy(monkeypatch, theirs, "filter_proposals")
    tv_assign = spy(monkeypatch, theirs, "assign_targets_to_anchors")
    x = features()
    with torch.no_grad():
        ours_out = ours(x, IMAGE_SIZES, targets() if train else None)
        tv_out = theirs(image_list(), {"0": x}, targets() if train else None)
    return ours, ours_out, tv_out, ours_propose, ours_assign, tv_filter, tv_assign


def test_our_anchors_are_torchvisions_shifted_by_half_a_stride_once_base_anchors_are_rounded():
    # Same order (H, W, A) with A ratio-major, same sizes: the only differences are torchvision's
    # rounding of the base anchors and its cell origin at the corner instead of the centre.
    tv_gen = TVAnchorGenerator(sizes=(SCALES,), aspect_ratios=(RATIOS,))
    feature = torch.zeros(1, CHANNELS, *FEATURE_SIZE)
    theirs = tv_gen(ImageList(torch.zeros(1, 3, 80, 128), [(80, 128)]), [feature])[0]
    rounded = grid_anchors(base_anchors(SCALES, RATIOS).round(), FEATURE_SIZE, STRIDE)
    assert theirs.shape == (5 * 8 * 9, 4)
    assert torch.equal(rounded - STRIDE / 2, theirs)
    # and unrounded, ours differ from the rounded ones by less than half a pixel per coordinate
    ours = AnchorGenerator(SCALES, RATIOS, STRIDE)(FEATURE_SIZE, torch.device("cpu"))
    assert (ours - rounded).abs().max() <= 0.5


def test_objectness_per_anchor_matches_torchvision_in_h_w_a_order(monkeypatch):
    _, _, _, ours_propose, _, tv_filter, _ = run_both(monkeypatch, train=False)
    (objectness, _, _, _), _ = ours_propose[0]            # (N, M) logits as the RPN reads them
    (_, tv_objectness, _, _), _ = tv_filter[0]            # (N * M, 1) logits
    assert objectness.shape == (2, 5 * 8 * 9)
    torch.testing.assert_close(objectness, tv_objectness.reshape(2, -1), rtol=1e-5, atol=1e-5)
    assert objectness.std() > 0.1   # a real spread of scores, not a constant a permutation hides


def test_box_deltas_per_anchor_decode_to_torchvisions_boxes(monkeypatch):
    ours, _, _, ours_propose, _, tv_filter, _ = run_both(monkeypatch, train=False)
    (_, deltas, anchors, _), _ = ours_propose[0]          # deltas (N, M, 4) as (A, 4) per cell
    (tv_boxes, _, _, _), _ = tv_filter[0]                 # decoded, before clipping, (N, M, 4)
    decoded = ours.box_coder.decode(deltas.reshape(-1, 4), anchors.repeat(2, 1)).view(2, -1, 4)
    torch.testing.assert_close(decoded, tv_boxes, rtol=1e-5, atol=1e-4)
    assert (decoded - anchors).abs().mean() > 1.0   # the deltas move the boxes by pixels


@pytest.mark.parametrize("train", [False, True], ids=["eval_top_n", "train_top_n"])
def test_proposals_of_two_non_square_images_of_different_sizes_match_torchvision(monkeypatch, train):
    _, (proposals, _), (tv_proposals, _), *_ = run_both(monkeypatch, train=train)
    for i, (h, w) in enumerate(IMAGE_SIZES):
        assert proposals[i].shape == tv_proposals[i].shape and proposals[i].shape[0] > 10
        # same boxes in the same (descending score) order
        torch.testing.assert_close(proposals[i], tv_proposals[i], rtol=1e-5, atol=1e-4)
        # clipped to this image's own width and height, and some proposals reach each border
        assert proposals[i][:, 2].max() == w and proposals[i][:, 3].max() == h


def test_anchor_labels_and_matched_gt_match_torchvision_when_border_anchors_are_kept(monkeypatch):
    _, _, _, _, ours_assign, _, tv_assign = run_both(monkeypatch, train=True)
    assert len(ours_assign) == 2
    (_, (tv_labels, tv_matched_boxes)), = tv_assign
    for i, ((_, _, gt), (labels, matched)) in enumerate(ours_assign):
        torch.testing.assert_close(labels.float(), tv_labels[i])
        pos = labels == 1
        # torchvision returns the matched GT box of every anchor; only positives' matter
        torch.testing.assert_close(gt[matched[pos]], tv_matched_boxes[i][pos])
        # a case with all three kinds of anchors, so the comparison means something
        assert pos.sum() >= len(gt) and (labels == 0).sum() > 100 and (labels == -1).sum() > 0


def test_losses_match_torchvision_when_every_labelled_anchor_is_sampled(monkeypatch):
    _, (_, losses), (_, tv_losses), *_ = run_both(monkeypatch, train=True)
    torch.testing.assert_close(losses["loss_rpn_objectness"], tv_losses["loss_objectness"])
    torch.testing.assert_close(losses["loss_rpn_box"], tv_losses["loss_rpn_box_reg"])
    assert tv_losses["loss_rpn_box_reg"] > 0.005
    # loss_lambda only scales the box term: torchvision has none (lambda = 1)
    _, (_, losses5), _, *_ = run_both(monkeypatch, train=True, loss_lambda=5.0)
    torch.testing.assert_close(losses5["loss_rpn_box"], 5 * tv_losses["loss_rpn_box_reg"])
    torch.testing.assert_close(losses5["loss_rpn_objectness"], tv_losses["loss_objectness"])


# ------------------------------------------------------------------ border rule (ours only)


def test_border_rule_on_a_non_square_image_by_hand():
    # image 48 high, 96 wide: x may reach 96, y only 48
    ours, _ = make_pair(border_tolerance=0.0)
    anchors = torch.tensor([
        [60.0, 8.0, 92.0, 40.0],    # 0: inside (x2 92 <= w 96); IoU 1 with the GT -> positive
        [8.0, 30.0, 40.0, 62.0],    # 1: crosses the bottom (y2 62 > h 48) -> ignored
        [8.0, 8.0, 40.0, 40.0],     # 2: inside, no overlap -> negative
        [70.0, 20.0, 100.0, 44.0],  # 3: crosses the right border (x2 100 > 96) -> ignored
        [50.0, 10.0, 94.0, 47.0],   # 4: inside, IoU 960 / 1692 = 0.57 with the GT -> ignored
    ])
    gt = torch.tensor([[60.0, 8.0, 92.0, 40.0]])
    labels, matched = ours.assign_targets(anchors, (48, 96), gt)
    assert labels.tolist() == [1, -1, 0, -1, -1]
    assert matched[0].item() == 0


def test_border_rule_equals_torchvision_on_the_inside_anchors_of_a_non_square_image():
    # With the border rule, our labels are torchvision's computed on the inside anchors alone,
    # and -1 outside: an outside anchor can be neither positive, negative nor any GT's best.
    ours, theirs = make_pair(border_tolerance=0.0)
    anchors = ours.anchor_generator(FEATURE_SIZE, torch.device("cpu"))
    for (h, w), gt in zip(IMAGE_SIZES, GT_BOXES):
        inside = ((anchors[:, 0] >= 0) & (anchors[:, 1] >= 0)
                  & (anchors[:, 2] <= w) & (anchors[:, 3] <= h))
        assert 20 < inside.sum() < len(anchors) - 20     # both kinds, many of each
        labels, matched = ours.assign_targets(anchors, (h, w), gt)
        (tv_labels,), (tv_matched,) = theirs.assign_targets_to_anchors([anchors[inside]], [{"boxes": gt}])
        assert (labels[~inside] == -1).all()
        torch.testing.assert_close(labels[inside].float(), tv_labels)
        pos = labels[inside] == 1
        torch.testing.assert_close(gt[matched[inside][pos]], tv_matched[pos])


# ------------------------------------------------------------------ regression targets by hand


def test_box_loss_uses_targets_encoding_the_gt_relative_to_the_anchor():
    # One 32 px anchor per cell of a 4 x 4 map, stride 16, 64 x 64 image; the head's weights are
    # zero and its biases fixed, so every anchor predicts logit 0 and deltas PRED. Inside anchors
    # (centres 24 and 40): [8, 8, 40, 40] is the GT's best (IoU 1024 / 1920 = 0.53) -> positive;
    # [24, 8, 56, 40] (0.28) and [24, 24, 56, 56] (0.26) negative, [8, 24, 40, 56] (0.48) ignored.
    gen = AnchorGenerator((32.0,), (1.0,), 16)
    head = RPNHead(4, 4, 1)
    pred = (0.1, 0.3, -0.2, 0.5)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.deltas.bias.copy_(torch.tensor(pred))
    rpn = RegionProposalNetwork(head, gen, **{**rpn_arguments(config_from_dict({})), "loss_lambda": 5.0,
                                                 "smooth_l1_beta": 1.0 / 9.0}).train()
    gt = {"boxes": torch.tensor([[4.0, 6.0, 44.0, 54.0]]), "labels": torch.tensor([1])}
    _, losses = rpn(torch.rand(1, 4, 4, 4), [(64, 64)], [gt])
    # GT centre (24, 30), size 40 x 48; anchor centre (24, 24), size 32 x 32 (paper eq. 2):
    target = (0.0, (30 - 24) / 32, math.log(40 / 32), math.log(48 / 32))
    beta = 1 / 9

    def smooth_l1(x: float) -> float:
        return 0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta

    sampled = 3     # 1 positive + 2 negatives
    expected = 5.0 * sum(smooth_l1(p - t) for p, t in zip(pred, target)) / sampled
    assert losses["loss_rpn_box"].item() == pytest.approx(expected, rel=1e-6)
    assert losses["loss_rpn_objectness"].item() == pytest.approx(math.log(2), rel=1e-6)
    # the same through torch's smooth-L1, to make sure the hand formula above is the right one
    ref = F.smooth_l1_loss(torch.tensor(pred), torch.tensor(target), beta=beta, reduction="sum")
    assert expected == pytest.approx(5.0 * ref.item() / sampled, rel=1e-6)
    # the IoUs the comment claims, so the hand labelling above is checked too
    anchors = torch.tensor([[8.0, 8, 40, 40], [24, 8, 56, 40], [24, 24, 56, 56], [8, 24, 40, 56]])
    iou = box_iou(gt["boxes"], anchors)[0]
    torch.testing.assert_close(iou, torch.tensor([1024 / 1920, 640 / 2304, 600 / 2344, 960 / 1984]))

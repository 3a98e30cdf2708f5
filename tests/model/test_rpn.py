"""frcnn.model.rpn: anchor labels (border rule, empty images), losses, proposals, detaching."""

from __future__ import annotations

import math

import pytest
import torch

from frcnn.config import config_from_dict
from frcnn.model.build import rpn_arguments
from frcnn.model.rpn import RegionProposalNetwork, RPNHead
from frcnn.ops.anchors import AnchorGenerator
from frcnn.ops.nms import nms_top_n


def make_rpn(in_channels: int = 8, scales=(32.0,), ratios=(1.0,), stride: int = 16,
             **settings) -> RegionProposalNetwork:
    gen = AnchorGenerator(scales, ratios, stride)
    head = RPNHead(in_channels, 16, gen.num_anchors)
    # params.yaml's RPN, with the test's own deviations spelled out
    return RegionProposalNetwork(head, gen, **{**rpn_arguments(config_from_dict({})), **settings})


def zero_head(rpn: RegionProposalNetwork) -> None:
    with torch.no_grad():
        for p in rpn.head.parameters():
            p.zero_()


def test_head_shapes():
    head = RPNHead(8, 16, num_anchors=3)
    obj, deltas = head(torch.rand(2, 8, 5, 7))
    assert obj.shape == (2, 3, 5, 7) and deltas.shape == (2, 12, 5, 7)


# 64 x 64 image; GT 0 = [8, 8, 40, 40], GT 1 = [0, 40, 20, 64] (in the bottom-left corner)
GT = torch.tensor([[8.0, 8.0, 40.0, 40.0], [0.0, 40.0, 20.0, 64.0]])
ANCHORS = torch.tensor([
    [8.0, 8.0, 40.0, 40.0],     # 0: IoU 1 with GT 0 -> positive
    [40.0, 40.0, 64.0, 64.0],   # 1: overlaps nothing -> negative
    [8.0, 8.0, 40.0, 56.0],     # 2: IoU 2/3 with GT 0, not its best -> ignored
    [-16.0, -16.0, 48.0, 48.0], # 3: crosses the border by 16 px -> ignored (else negative, 0.25)
    [-4.0, 36.0, 24.0, 68.0],   # 4: crosses by 4 px; GT 1's best overall (IoU 480 / 896 = 0.54)
    [0.0, 30.0, 30.0, 64.0],    # 5: GT 1's best inside the image (480 / 1020 = 0.47)
])


def test_anchor_labels_by_hand_border_anchors_ignored():
    rpn = make_rpn()
    labels, matched = rpn.assign_targets(ANCHORS, (64, 64), GT)
    # anchor 5 is positive only by the best-anchor rule, since GT 1's best anchor (4) is ignored
    assert labels.tolist() == [1, 0, -1, -1, -1, 1]
    assert matched[0].item() == 0 and matched[5].item() == 1


def test_anchor_labels_keeping_or_tolerating_border_anchors():
    keep_all = make_rpn(border_tolerance=-1.0)
    labels, matched = keep_all.assign_targets(ANCHORS, (64, 64), GT)
    assert labels.tolist() == [1, 0, -1, 0, 1, -1]
    assert matched[4].item() == 1
    tolerant = make_rpn(border_tolerance=8.0)   # anchor 4 (4 px out) counts, anchor 3 (16 px) not
    labels, _ = tolerant.assign_targets(ANCHORS, (64, 64), GT)
    assert labels.tolist() == [1, 0, -1, -1, 1, -1]


def test_no_gt_boxes_every_inside_anchor_is_negative():
    labels, _ = make_rpn().assign_targets(ANCHORS, (64, 64), torch.zeros(0, 4))
    assert labels.tolist() == [0, 0, 0, -1, -1, 0]


def test_loss_of_an_image_without_objects_is_objectness_only():
    torch.manual_seed(0)
    rpn = make_rpn(batch_size_per_image=16).train()
    zero_head(rpn)      # objectness logits 0 -> BCE = log 2 for every sampled anchor
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    _, losses = rpn(torch.rand(1, 8, 4, 4), [(64, 64)], [empty])
    assert set(losses) == {"loss_rpn_objectness", "loss_rpn_box"}
    assert losses["loss_rpn_objectness"].item() == pytest.approx(math.log(2))
    assert losses["loss_rpn_box"].item() == 0.0
    # with the random head too, the losses are finite and backpropagate
    rpn = make_rpn(batch_size_per_image=16).train()
    _, losses = rpn(torch.rand(2, 8, 4, 4), [(64, 64), (48, 64)], [empty, empty])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_rpn_box"].item() == 0.0
    assert rpn.head.objectness.weight.grad.abs().sum() > 0


def test_loss_with_objects_regresses_positives_towards_their_gt():
    torch.manual_seed(0)
    rpn = make_rpn(batch_size_per_image=16, loss_lambda=5.0, smooth_l1_beta=1 / 9).train()
    zero_head(rpn)      # deltas 0: every positive anchor's regression error is its target
    # a 4x4 map at stride 16 with 32 px anchors: anchor centres at 8, 24, 40, 56
    gt = {"boxes": torch.tensor([[10.0, 8.0, 42.0, 40.0]]), "labels": torch.tensor([1])}
    _, losses = rpn(torch.rand(1, 8, 4, 4), [(64, 64)], [gt])
    # only the 4 anchors centred at 24 or 40 lie inside the image. [8, 8, 40, 40] is positive
    # (IoU 960 / 1088 = 0.88), [24, 24, 56, 56] negative (0.16), the other two ignored (0.39, 0.31):
    # S = 2 sampled. Target (2 / 32, 0, 0, 0); smooth-L1 (beta 1/9) = 0.5 * (1/16)^2 * 9; lambda 5
    expected = 5.0 * 0.5 * (1 / 16) ** 2 * 9 / 2
    assert losses["loss_rpn_box"].item() == pytest.approx(expected)
    assert losses["loss_rpn_objectness"].item() == pytest.approx(math.log(2))


def test_propose_decodes_clips_drops_small_boxes_and_applies_nms():
    rpn = make_rpn(nms_thresh=0.7, min_box_size=1.0, pre_nms_top_n_train=10, pre_nms_top_n_test=10, post_nms_top_n_train=10, post_nms_top_n_test=10)
    anchors = torch.tensor([[0.0, 0.0, 20.0, 20.0],     # score 5
                            [1.0, 1.0, 21.0, 21.0],     # score 4: IoU 0.82 with the above -> NMS
                            [30.0, 30.0, 50.0, 50.0],   # score 3
                            [40.0, 40.0, 40.5, 60.0],   # score 6: 0.5 px wide -> dropped
                            [50.0, 50.0, 80.0, 80.0]])  # score 2: clipped to the 64 x 64 image
    scores = torch.tensor([[5.0, 4.0, 3.0, 6.0, 2.0]])
    deltas = torch.zeros(1, 5, 4)
    out = rpn.propose(scores, deltas, anchors, [(64, 64)])
    assert len(out) == 1
    assert out[0].tolist() == [[0.0, 0.0, 20.0, 20.0], [30.0, 30.0, 50.0, 50.0], [50.0, 50.0, 64.0, 64.0]]
    # deltas move the boxes: tx = 0.5 shifts anchor 0 by half its width
    deltas[0, 0] = torch.tensor([0.5, 0.0, 0.0, 0.0])
    assert rpn.propose(scores, deltas, anchors, [(64, 64)])[0][0].tolist() == [10.0, 0.0, 30.0, 20.0]


def test_propose_top_n_per_phase_and_images_do_not_suppress_each_other():
    anchors = torch.tensor([[0.0, 0.0, 20.0, 20.0], [30.0, 30.0, 50.0, 50.0], [0.0, 30.0, 20.0, 50.0]])
    scores = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    deltas = torch.zeros(2, 3, 4)
    rpn = make_rpn(pre_nms_top_n_train=3, pre_nms_top_n_test=2, post_nms_top_n_train=2, post_nms_top_n_test=1)
    train = rpn.train().propose(scores, deltas, anchors, [(64, 64), (64, 64)])
    assert [p.shape[0] for p in train] == [2, 2]    # post-NMS top 2 in training
    assert torch.equal(train[0], train[1])          # identical boxes in two images both survive
    test = rpn.eval().propose(scores, deltas, anchors, [(64, 64), (64, 64)])
    assert [p.tolist() for p in test] == [[[0.0, 0.0, 20.0, 20.0]]] * 2   # post-NMS top 1 in eval
    # pre-NMS top 2 in eval: the lowest-scoring anchor is never decoded
    rpn = make_rpn(pre_nms_top_n_train=3, pre_nms_top_n_test=2, post_nms_top_n_train=3, post_nms_top_n_test=3).eval()
    assert rpn.propose(scores, deltas, anchors, [(64, 64)] * 2)[0].shape[0] == 2


def test_proposals_are_detached_but_the_losses_reach_the_head():
    torch.manual_seed(0)
    rpn = make_rpn(scales=(24.0, 48.0), ratios=(0.5, 1.0, 2.0)).train()
    features = torch.rand(1, 8, 6, 6, requires_grad=True)
    gt = {"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])}
    proposals, losses = rpn(features, [(96, 96)], [gt])
    assert not proposals[0].requires_grad and proposals[0].grad_fn is None
    assert proposals[0].shape[1] == 4 and proposals[0].shape[0] > 0
    (losses["loss_rpn_objectness"] + losses["loss_rpn_box"]).backward()
    assert rpn.head.deltas.weight.grad.abs().sum() > 0 and features.grad.abs().sum() > 0


def test_training_without_targets_is_an_error():
    with pytest.raises(ValueError, match="targets"):
        make_rpn().train()(torch.rand(1, 8, 4, 4), [(64, 64)], None)


def test_every_setting_is_an_explicit_argument_without_a_default():
    # a default here could disagree with params.yaml (build_model passes every one)
    gen = AnchorGenerator((32.0,), (1.0,), 16)
    with pytest.raises(TypeError, match="required keyword-only"):
        RegionProposalNetwork(RPNHead(8, 16, 1), gen)  # type: ignore[call-arg]
    args = rpn_arguments(config_from_dict({"loss": {"lambda": 7.0}}))
    assert RegionProposalNetwork(RPNHead(8, 16, 1), gen, **args).loss_lambda == 7.0


@pytest.mark.parametrize("post_n", [50, 300, 5000])
def test_test_time_proposals_stop_nms_early_with_the_same_result(monkeypatch, post_n):
    """At test time, above torchvision's per-image NMS size, each image's NMS stops at the
    proposals it keeps (frcnn.ops.nms): the same proposals as one batched_nms over the batch."""
    import frcnn.model.rpn as rpn_module

    torch.manual_seed(0)
    rpn = make_rpn(scales=(16.0, 32.0, 64.0, 128.0), ratios=(0.5, 1.0, 2.0),
                   post_nms_top_n_test=post_n).eval()
    features = torch.randn(2, 8, 16, 16)
    sizes = [(256, 256), (250, 200)]
    stopped = []
    monkeypatch.setattr(rpn_module, "nms_top_n",
                        lambda *a: stopped.append(1) or nms_top_n(*a))
    with torch.no_grad():
        fast, _ = rpn(features, sizes)
        assert len(stopped) == 2  # one per image: 2 x 3072 candidates are above 4000 coordinates
        monkeypatch.setattr(rpn_module, "per_group_nms", lambda boxes: False)
        slow, _ = rpn(features, sizes)
    assert len(stopped) == 2 and all(0 < p.shape[0] <= post_n for p in slow)
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)

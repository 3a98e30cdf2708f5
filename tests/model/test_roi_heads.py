"""frcnn.model.roi_heads: RoI pooling at 1/stride, RoI sampling, the heads, post-processing."""

from __future__ import annotations

import math

import pytest
import torch

from frcnn.config import config_from_dict
from frcnn.model.build import roi_arguments
from frcnn.model.roi_heads import (
    AvgPoolHead,
    BoxPredictor,
    MLPHead,
    RoIHeads,
)


def make_heads(stride: int = 16, channels: int = 4, num_classes: int = 3, head: str = "mlp",
               **settings) -> RoIHeads:
    # params.yaml's second stage, with the test's own deviations spelled out
    args = {**roi_arguments(config_from_dict({})), **settings}
    box_head = (MLPHead(channels * args["output_size"] ** 2, 32) if head == "mlp"
                else AvgPoolHead(channels, 32))
    return RoIHeads(box_head, BoxPredictor(32, num_classes), stride, **args)


def position_features(stride: int, size: int) -> torch.Tensor:
    """(1, 2, size, size): channel 0 holds the x, channel 1 the y, of each cell's centre in pixels."""
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) * stride
    return torch.stack((centres.expand(size, size), centres[:, None].expand(size, size)))[None]


@pytest.mark.parametrize("op", ["align_grid", "align"])
@pytest.mark.parametrize("stride", [8, 16])
def test_roi_align_samples_the_rois_own_pixels(stride, op):
    heads = make_heads(stride=stride, op=op, output_size=2, sampling_ratio=2)
    assert heads.spatial_scale == 1 / stride
    rois = [torch.tensor([[32.0, 64.0, 96.0, 128.0]])]
    out = heads.pool(position_features(stride, 160 // stride), rois)
    # bilinear sampling of a linear map is exact: each bin's average is the centre of that quarter
    # of the RoI, in pixels: x centres 48 and 80, y centres 80 and 112
    assert out.shape == (1, 2, 2, 2)
    assert out[0, 0].tolist() == [[48.0, 80.0], [48.0, 80.0]]
    assert out[0, 1].tolist() == [[80.0, 80.0], [112.0, 112.0]]


@pytest.mark.parametrize("stride", [8, 16])
def test_roi_pool_takes_the_max_over_the_rois_cells(stride):
    heads = make_heads(stride=stride, op="pool", output_size=1)
    rois = [torch.tensor([[32.0, 64.0, 96.0, 128.0]])]
    out = heads.pool(position_features(stride, 160 // stride), rois)
    # RoIPool rounds the corners to cells and includes the end cell: x cells 32/s .. 96/s, so the
    # max is the centre of cell 96/s, i.e. 96 + s/2 px (and 128 + s/2 for y)
    assert out[0, :, 0, 0].tolist() == [96 + stride / 2, 128 + stride / 2]


@pytest.mark.parametrize("op", ["align_grid", "align", "pool"])
def test_pool_takes_each_rois_own_image(op):
    heads = make_heads(op=op, output_size=1, sampling_ratio=2)
    feats = torch.stack((torch.zeros(4, 4, 4), torch.ones(4, 4, 4)))  # image 0 zeros, image 1 ones
    box = [[0.0, 0.0, 32.0, 32.0]]
    out = heads.pool(feats, [torch.tensor(box), torch.tensor(box * 2)])  # 1 RoI, then 2
    assert out.shape == (3, 4, 1, 1)
    assert out.flatten(1).mean(1).tolist() == [0.0, 1.0, 1.0]


def test_head_and_predictor_shapes():
    x = torch.rand(5, 4, 7, 7)
    assert MLPHead(4 * 49, 32)(x).shape == (5, 32)
    assert AvgPoolHead(4, 32)(x).shape == (5, 32)
    logits, deltas = BoxPredictor(32, num_classes=3)(torch.rand(5, 32))
    assert logits.shape == (5, 4) and deltas.shape == (5, 16)   # K + 1 classes, per-class boxes
    logits, deltas = BoxPredictor(32, num_classes=3, class_agnostic=True)(torch.rand(5, 32))
    assert logits.shape == (5, 4) and deltas.shape == (5, 4)    # one box for every class


GT_BOX = torch.tensor([[0.0, 0.0, 20.0, 20.0]])
PROPOSALS = torch.tensor([[0.0, 0.0, 20.0, 22.0],    # IoU 400 / 440 = 0.91 -> foreground
                          [10.0, 0.0, 30.0, 20.0],   # IoU 1 / 3 -> background
                          [18.0, 0.0, 38.0, 20.0],   # IoU 40 / 760 = 0.05
                          [50.0, 50.0, 60.0, 60.0]]) # IoU 0


def test_sample_adds_gt_boxes_and_labels_rois_by_hand():
    torch.manual_seed(0)
    heads = make_heads(batch_size_per_image=8, positive_fraction=0.5, bg_iou_thresh_lo=0.1)
    rois, labels, targets = heads.sample(PROPOSALS, GT_BOX, torch.tensor([3]))
    # foreground: proposal 0 and the appended GT box; background [0.1, 0.5): proposal 1 only;
    # proposals 2 and 3 (IoU < 0.1) are neither, as in the paper
    order = sorted(range(3), key=lambda i: rois[i].tolist())
    assert [rois[i].tolist() for i in order] == [[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 20.0, 22.0],
                                                  [10.0, 0.0, 30.0, 20.0]]
    assert [labels[i].item() for i in order] == [3, 3, 0]
    # deltas with weights (10, 10, 5, 5): the GT itself needs none; proposal 0 moves up 1 px
    # (ty = 10 * (10 - 11) / 22) and shrinks from 22 to 20 px high (th = 5 * log(20 / 22))
    assert targets[order[0]].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert targets[order[1]].tolist() == pytest.approx([0.0, -10 / 22, 0.0, 5 * math.log(20 / 22)])
    # with the background interval [0, 0.5) every non-foreground proposal is background
    heads = make_heads(batch_size_per_image=8, positive_fraction=0.5, bg_iou_thresh_lo=0.0)
    _, labels, _ = heads.sample(PROPOSALS, GT_BOX, torch.tensor([3]))
    assert sorted(labels.tolist()) == [0, 0, 0, 3, 3]


def test_sample_caps_the_foreground_fraction():
    torch.manual_seed(0)
    heads = make_heads(batch_size_per_image=8, positive_fraction=0.25)
    many_fg = GT_BOX.repeat(10, 1) + torch.rand(10, 1)      # 10 near-copies of the GT
    bg = torch.tensor([[10.0, 0.0, 30.0, 20.0]]).repeat(10, 1)
    _, labels, _ = heads.sample(torch.cat((many_fg, bg)), GT_BOX, torch.tensor([1]))
    assert labels.numel() == 8 and (labels > 0).sum().item() == 2


def test_sample_without_gt_boxes_is_all_background():
    torch.manual_seed(0)
    heads = make_heads(batch_size_per_image=8)
    rois, labels, targets = heads.sample(PROPOSALS, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    assert labels.tolist() == [0, 0, 0, 0] and rois.shape == (4, 4) and targets.shape == (4, 4)


@pytest.mark.parametrize("op", ["align_grid", "align", "pool"])
@pytest.mark.parametrize("head", ["mlp", "avg"])
def test_training_losses_are_finite_and_empty_images_have_no_box_loss(op, head):
    torch.manual_seed(0)
    heads = make_heads(op=op, head=head, batch_size_per_image=16).train()
    feats = torch.rand(2, 4, 8, 8)
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 60.0, 70.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    dets, losses = heads(feats, [PROPOSALS * 2, PROPOSALS], [(128, 128)] * 2, targets)
    assert dets == [] and set(losses) == {"loss_classifier", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_box_reg"].item() > 0
    sum(losses.values()).backward()
    assert heads.predictor.bbox_pred.weight.grad.abs().sum() > 0
    # a batch of images without objects: classification only (all background)
    _, losses = heads(feats, [PROPOSALS, PROPOSALS], [(128, 128)] * 2, [targets[1], targets[1]])
    assert torch.isfinite(losses["loss_classifier"]) and losses["loss_box_reg"].item() == 0.0


def set_predictions(heads: RoIHeads, probs: list[list[float]], deltas: torch.Tensor | None = None):
    """Make the predictor output log(probs) (so softmax = probs) and `deltas`, whatever its input."""
    p = torch.tensor(probs)
    logits, d = torch.log(p), (deltas if deltas is not None else torch.zeros(p.shape[0], 4 * p.shape[1]))
    heads.predictor.forward = lambda x: (logits, d)


def test_postprocess_by_hand_threshold_clip_per_class_nms_sorted():
    heads = make_heads(num_classes=2, score_thresh=0.05, nms_thresh=0.5).eval()
    proposals = torch.tensor([[0.0, 0.0, 20.0, 20.0], [1.0, 1.0, 21.0, 21.0],
                              [40.0, 40.0, 70.0, 70.0], [30.0, 30.0, 70.0, 70.0]])
    set_predictions(heads, [[0.1, 0.8, 0.1],      # class 1 0.8; class 2 0.1 (suppressed below)
                            [0.1, 0.7, 0.2],      # class 1: IoU 0.82 with the 0.8 -> NMS; class 2 kept
                            [0.96, 0.01, 0.03],   # both under the score threshold
                            [0.41, 0.55, 0.04]])  # class 1, clipped to the 60 x 50 image
    dets, losses = heads(torch.rand(1, 4, 8, 8), [proposals], [(50, 60)])
    assert losses == {} and len(dets) == 1
    d = dets[0]
    assert d["labels"].tolist() == [1, 1, 2]
    assert d["scores"].tolist() == pytest.approx([0.8, 0.55, 0.2])
    assert d["boxes"].tolist() == [[0.0, 0.0, 20.0, 20.0], [30.0, 30.0, 60.0, 50.0], [1.0, 1.0, 21.0, 21.0]]
    # at most detections_per_img, the best first
    heads = make_heads(num_classes=2, detections_per_img=2).eval()
    set_predictions(heads, [[0.1, 0.8, 0.1], [0.1, 0.7, 0.2], [0.96, 0.01, 0.03], [0.41, 0.55, 0.04]])
    d = heads(torch.rand(1, 4, 8, 8), [proposals], [(50, 60)])[0][0]
    assert d["scores"].tolist() == pytest.approx([0.8, 0.55])


def test_postprocess_decodes_the_deltas_of_each_class():
    heads = make_heads(num_classes=2, score_thresh=0.05).eval()
    deltas = torch.zeros(1, 12)
    deltas[0, 4:8] = torch.tensor([5.0, 0.0, 0.0, 0.0])        # class 1: dx = 5 / 10 -> half a width
    deltas[0, 8:12] = torch.tensor([0.0, 0.0, 0.0, 5 * math.log(0.5)])  # class 2: half as high
    set_predictions(heads, [[0.2, 0.4, 0.4]], deltas)
    d = heads(torch.rand(1, 4, 8, 8), [torch.tensor([[0.0, 0.0, 20.0, 20.0]])], [(100, 100)])[0][0]
    boxes = {lab: box for lab, box in zip(d["labels"].tolist(), d["boxes"].tolist())}
    assert boxes[1] == pytest.approx([10.0, 0.0, 30.0, 20.0])
    assert boxes[2] == pytest.approx([0.0, 5.0, 20.0, 15.0])


def test_class_agnostic_deltas_give_every_class_the_same_box():
    """(R, 4) deltas detect exactly what (R, 4(K+1)) deltas repeating them per class detect."""
    proposals = [torch.tensor([[0.0, 0.0, 20.0, 20.0], [30.0, 10.0, 50.0, 40.0]]), torch.zeros(0, 4)]
    probs = [[0.2, 0.5, 0.3], [0.1, 0.3, 0.6]]
    agnostic = torch.tensor([[5.0, 0.0, 0.0, 5 * math.log(0.5)], [-2.0, 3.0, 1.0, 0.0]])
    results = []
    for deltas in (agnostic, agnostic.repeat(1, 3)):
        heads = make_heads(num_classes=2, score_thresh=0.05).eval()
        set_predictions(heads, probs, deltas)
        results.append(heads(torch.rand(2, 4, 8, 8), proposals, [(100, 100)] * 2)[0])
    (first, empty), (second, _) = results
    assert len(first["boxes"]) == 4 and empty["boxes"].shape == (0, 4)
    for key in ("boxes", "labels", "scores"):
        torch.testing.assert_close(first[key], second[key])
    assert first["boxes"][first["labels"] == 1][0].tolist() == pytest.approx([10.0, 5.0, 30.0, 15.0])


def test_an_image_without_proposals_gets_empty_detections():
    heads = make_heads(num_classes=2).eval()
    with torch.no_grad():
        dets, _ = heads(torch.rand(2, 4, 8, 8), [torch.zeros(0, 4), PROPOSALS], [(64, 64)] * 2)
    assert dets[0]["boxes"].shape == (0, 4) and dets[0]["scores"].shape == (0,)
    assert dets[0]["labels"].shape == (0,) and dets[0]["labels"].dtype == torch.int64

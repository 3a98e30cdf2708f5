"""`trace` captures the model's own forward pass: what it records equals what the model returns
and what its own functions compute, and it leaves the model, BatchNorm and the RNG as they were."""

from __future__ import annotations

import pytest
import torch

import frcnn.model.rpn as rpn_module
from frcnn.analysis.explain import proposal_recall, rescued_positives, summarize
from frcnn.analysis.trace import trace
from frcnn.config import config_from_dict
from frcnn.model.build import build_model
from tests.tiny_project import tiny_params

GT = {"boxes": torch.tensor([[10.0, 10.0, 40.0, 50.0], [50.0, 5.0, 78.0, 30.0]]),
      "labels": torch.tensor([1, 2])}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model(config_from_dict(tiny_params()), num_classes=2)
    # some non-trivial BatchNorm statistics, so "left as they were" means something
    for bn in (m_ for m_ in m.modules() if isinstance(m_, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.1, 0.1)
    return m.eval()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(3))


def test_eval_view_equals_the_models_own_outputs(model, image) -> None:
    tr = trace(model, image)
    with torch.inference_mode():
        want = model([image])[0]
        batch, sizes, _ = model.transform([image])
        features = model.backbone(batch)
        proposals, _ = model.rpn(features, sizes)
    assert all(torch.equal(tr.detections[k], want[k]) for k in want)
    assert torch.equal(tr.proposals, proposals[0])
    h, w = features.shape[-2:]
    a = model.rpn.anchor_generator.num_anchors
    assert tr.settings["feature_hw"] == (h, w) and tr.num_anchor_shapes == a
    assert tr.anchors.shape == (h * w * a, 4) and tr.objectness.shape == (a, h, w)
    assert torch.equal(tr.anchors, model.rpn.anchor_generator((h, w), torch.device("cpu")))
    assert tr.image_size == sizes[0]
    # NMS got at most pre_nms_top_n boxes; what it kept, cut to post_nms_top_n, are the proposals
    assert tr.pre_nms_boxes.shape[0] <= model.rpn.pre_nms_top_n["test"]
    kept = tr.pre_nms_boxes[tr.nms_keep][: model.rpn.post_nms_top_n["test"]]
    assert torch.equal(kept, tr.proposals)
    assert tr.training is None and "gt" not in summarize(tr)


def test_training_view_equals_the_rpns_own_labelling(model, image) -> None:
    tr = trace(model, image, GT)
    view = tr.training
    scaled = GT["boxes"] * torch.tensor([tr.image_size[1] / 80, tr.image_size[0] / 64] * 2)
    torch.testing.assert_close(view.gt_boxes, scaled)
    labels, matched = model.rpn.assign_targets(tr.anchors, tr.image_size, view.gt_boxes)
    assert torch.equal(view.anchor_labels, labels) and torch.equal(view.anchor_matched, matched)
    s = summarize(tr)
    assert s["anchor_positive"] + s["anchor_negative"] + s["anchor_ignored"] == s["anchors"]
    assert s["anchor_positive"] >= 1  # every GT has its best anchor
    # the sampled anchors are a subset of the labelled ones, within the RPN's batch
    assert (view.anchor_labels[view.rpn_positive] == 1).all()
    assert (view.anchor_labels[view.rpn_negative] == 0).all()
    assert s["rpn_sampled_positive"] + s["rpn_sampled_negative"] <= model.rpn.batch_size_per_image
    # RoIs: GT appended, so every GT is a foreground RoI of its own class
    assert s["roi_foreground"] >= 2 and s["roi_foreground"] + s["roi_background"] <= \
        model.roi_heads.batch_size_per_image
    assert set(view.roi_labels[view.roi_labels > 0].tolist()) <= {1, 2}


def test_rescued_positives_are_those_below_the_positive_threshold(model, image) -> None:
    tr = trace(model, image, GT)
    view = tr.training
    from torchvision.ops import box_iou

    pos = torch.where(view.anchor_labels == 1)[0]
    iou = box_iou(tr.anchors[pos], view.gt_boxes)[torch.arange(pos.numel()), view.anchor_matched[pos]]
    assert torch.equal(rescued_positives(tr), pos[iou < tr.settings["pos_iou_thresh"]])


def test_trace_leaves_model_rng_and_functions_as_they_were(model, image) -> None:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    nms, sample = rpn_module.batched_nms, rpn_module.sample_balanced
    a = trace(model, image, GT, seed=5)
    b = trace(model, image, GT, seed=5)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.random.get_rng_state())
    assert not model.training and all(not m.training for m in model.modules())
    assert rpn_module.batched_nms is nms and rpn_module.sample_balanced is sample
    assert not {"propose", "assign_targets"} & set(vars(model.rpn))
    assert "sample" not in vars(model.roi_heads)
    # the seed fixes the sampling: the same RoIs twice
    assert torch.equal(a.training.roi_boxes, b.training.roi_boxes)


def test_proposal_recall_counts_covered_gt() -> None:
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    props = torch.tensor([[0.0, 0, 10, 11], [50, 50, 60, 60]])
    assert proposal_recall(props, gt, 0.5) == 0.5
    assert proposal_recall(props[:0], gt, 0.5) == 0.0
    assert proposal_recall(props, gt[:0], 0.5) != proposal_recall(props, gt[:0], 0.5)  # nan

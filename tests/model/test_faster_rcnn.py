"""frcnn.model.faster_rcnn: the whole detector — losses, outputs, bad input, detached proposals,
every backbone and RoI op wired in, and an overfit test on one synthetic image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

import frcnn
from frcnn.config import config_from_dict
from frcnn.model.build import build_model
from frcnn.model.faster_rcnn import FasterRCNN

LOSS_NAMES = {"loss_rpn_objectness", "loss_rpn_box", "loss_classifier", "loss_box_reg"}


def tiny_config(**overrides):
    """resnet18_c4 at ~100 px with narrow heads and few proposals: a forward pass in ~50 ms."""
    base = {"model.min_size": 96, "model.max_size": 128, "anchors.scales": [32, 64],
            "rpn.hidden_channels": 32, "rpn.batch_size_per_image": 64,
            "rpn.pre_nms_top_n_train": 200, "rpn.post_nms_top_n_train": 50,
            "rpn.pre_nms_top_n_test": 100, "rpn.post_nms_top_n_test": 30,
            "roi.hidden_dim": 32, "roi.batch_size_per_image": 32}
    return config_from_dict({}, {**base, **overrides})


def tiny_model(num_classes: int = 3, **overrides) -> FasterRCNN:
    torch.manual_seed(0)
    return build_model(tiny_config(**overrides), num_classes=num_classes)


def target(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


EMPTY = target([], [])


def images_and_targets():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 100, 150, generator=g), torch.rand(3, 80, 60, generator=g)]
    targets = [target([[10.0, 20.0, 60.0, 90.0], [70.0, 5.0, 140.0, 50.0]], [1, 3]),
               target([[5.0, 5.0, 40.0, 70.0]], [2])]
    return images, targets


def test_package_entry_point_builds_the_model():
    model = frcnn.build_model(tiny_config(), num_classes=2)
    assert isinstance(model, FasterRCNN) and model.num_classes == 2
    assert model.roi_heads.predictor.cls_score.out_features == 3   # K + background


def test_num_classes_zero_without_a_dataset_count_is_an_error():
    with pytest.raises(ValueError, match="model.num_classes"):
        build_model(tiny_config())
    assert build_model(tiny_config(**{"model.num_classes": 4})).num_classes == 4


def test_train_mode_returns_four_finite_named_losses_that_train_everything():
    model = tiny_model().train()
    images, targets = images_and_targets()
    losses = model(images, targets)
    assert set(losses) == LOSS_NAMES
    assert all(v.dim() == 0 and torch.isfinite(v) and v.item() > 0 for v in losses.values())
    sum(losses.values()).backward()
    for module in (model.backbone, model.rpn.head, model.roi_heads.box_head, model.roi_heads.predictor):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_images_without_objects_train_with_zero_box_losses():
    model = tiny_model().train()
    images, targets = images_and_targets()
    losses = model(images, [targets[0], EMPTY])          # one empty image among others
    assert all(torch.isfinite(v) for v in losses.values())
    losses = model(images, [EMPTY, EMPTY])                # nothing to find anywhere
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_rpn_box"].item() == 0.0 and losses["loss_box_reg"].item() == 0.0
    assert losses["loss_rpn_objectness"].item() > 0 and losses["loss_classifier"].item() > 0
    sum(losses.values()).backward()


def test_eval_output_format_in_input_pixels():
    model = tiny_model(**{"roi.score_thresh": 0.0, "roi.detections_per_img": 5}).eval()
    images, _ = images_and_targets()
    with torch.no_grad():
        out = model(images)
    assert isinstance(out, list) and len(out) == 2
    for det, img in zip(out, images):
        assert set(det) == {"boxes", "labels", "scores"}
        n = det["boxes"].shape[0]
        assert 0 < n <= 5 and det["boxes"].shape == (n, 4)
        assert det["labels"].shape == det["scores"].shape == (n,)
        assert det["labels"].dtype == torch.int64 and det["boxes"].dtype == torch.float32
        assert ((det["labels"] >= 1) & (det["labels"] <= 3)).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()          # best first
        h, w = img.shape[-2:]                                           # the original size,
        b = det["boxes"]                                                # not the resized one
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 2] <= w + 1e-3).all() and (b[:, 3] <= h + 1e-3).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()


def test_eval_boxes_are_rescaled_from_the_resized_image_to_the_input_image():
    model = tiny_model().eval()
    seen = {}

    def whole_image(module, args, output):
        # replace the detections by one box covering each resized image (args[2]: its sizes)
        seen["sizes"] = args[2]
        dets = [{"boxes": torch.tensor([[0.0, 0.0, float(w), float(h)]]), "labels": torch.tensor([1]),
                 "scores": torch.tensor([0.9])} for h, w in args[2]]
        return dets, {}
    model.roi_heads.register_forward_hook(whole_image)
    images, _ = images_and_targets()                      # 100 x 150 and 80 x 60
    with torch.no_grad():
        out = model(images)
    # min_size 96, max_size 128: 100 x 150 -> 85 x 128 (long side capped), 80 x 60 -> 128 x 96
    assert seen["sizes"] == [(85, 128), (128, 96)]
    torch.testing.assert_close(out[0]["boxes"], torch.tensor([[0.0, 0.0, 150.0, 100.0]]))
    torch.testing.assert_close(out[1]["boxes"], torch.tensor([[0.0, 0.0, 60.0, 80.0]]))


@pytest.mark.parametrize("mutate, message", [
    (lambda im, t: im.__setitem__(1, (im[1] * 255).to(torch.uint8)), "image 1: expected a float tensor"),
    (lambda im, t: im.__setitem__(1, im[1][0]), "image 1: expected a Tensor[3, H, W]"),
    (lambda im, t: im.__setitem__(0, im[0][None]), "image 0: expected a Tensor[3, H, W]"),
    (lambda im, t: t[1]["boxes"].__setitem__((0, 2), 5.0),
     "target 1: box 0 [5.0, 5.0, 5.0, 70.0] has x2 <= x1"),
    (lambda im, t: t[0]["boxes"].__setitem__((1, 3), 2.0), "target 0: box 1 [70.0, 5.0, 140.0, 2.0] has x2"),
    (lambda im, t: t[1]["boxes"].__setitem__((0, 1), math.nan), "target 1: boxes contain NaN or inf"),
    (lambda im, t: t[0]["labels"].__setitem__(1, 4), "target 0: label 4 of box 1 is outside 1..3"),
    (lambda im, t: t[1]["labels"].__setitem__(0, 0),
     "target 1: label 0 of box 0 is outside 1..3 (0 is background)"),
])
def test_bad_input_raises_value_error_naming_the_index(mutate, message):
    model = tiny_model().train()
    images, targets = images_and_targets()
    mutate(images, targets)
    with pytest.raises(ValueError) as err:
        model(images, targets)
    assert str(err.value).startswith(message)


def test_training_without_targets_or_with_a_target_missing_is_an_error():
    model = tiny_model().train()
    images, targets = images_and_targets()
    with pytest.raises(ValueError, match="targets: required in training mode"):
        model(images)
    with pytest.raises(ValueError, match="targets: 1 targets for 2 images"):
        model(images, targets[:1])
    with pytest.raises(ValueError, match="image 1: expected a float tensor"):
        model.eval()([images[0], torch.zeros(3, 8, 8, dtype=torch.uint8)])


def test_proposals_are_detached_from_the_rpn():
    model = tiny_model().train()
    images, targets = images_and_targets()
    seen = {}

    def grab(module, args):
        seen["proposals"] = args[1]
    model.roi_heads.register_forward_pre_hook(grab)
    losses = model(images, targets)
    assert all(not p.requires_grad for p in seen["proposals"])
    # the second stage's losses alone: no gradient reaches the RPN's head (its proposals are
    # constants, as in the paper's approximate joint training); the shared backbone does get one
    # through the pooled features, and the box head and predictor of course
    (losses["loss_classifier"] + losses["loss_box_reg"]).backward()
    for p in model.rpn.head.parameters():
        assert p.grad is None or p.grad.abs().sum() == 0
    assert model.roi_heads.predictor.bbox_pred.weight.grad.abs().sum() > 0
    assert model.roi_heads.box_head.fc1.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    # and the RPN's losses alone do not reach the second stage
    model.zero_grad(set_to_none=True)
    losses = model(images, targets)
    (losses["loss_rpn_objectness"] + losses["loss_rpn_box"]).backward()
    for p in model.roi_heads.parameters():
        assert p.grad is None or p.grad.abs().sum() == 0
    assert model.rpn.head.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("op, head", [("align_grid", "mlp"), ("align", "mlp"), ("pool", "mlp"),
                                      ("pool", "avg"), ("align", "avg")])
def test_roi_pool_and_roi_align_both_run_end_to_end(op, head):
    model = tiny_model(**{"roi.op": op, "roi.head": head, "roi.score_thresh": 0.0})
    assert model.roi_heads.spatial_scale == 1 / 16
    images, targets = images_and_targets()
    losses = model.train()(images, targets)
    assert set(losses) == LOSS_NAMES and all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        out = model.eval()(images)
    assert len(out) == 2 and all(d["boxes"].shape[0] > 0 for d in out)


def test_class_agnostic_box_regression_runs_end_to_end():
    model = tiny_model(**{"roi.class_agnostic_box": True, "roi.score_thresh": 0.0})
    assert model.roi_heads.predictor.bbox_pred.out_features == 4
    images, targets = images_and_targets()
    losses = model.train()(images, targets)
    assert losses["loss_box_reg"] > 0 and all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        out = model.eval()(images)
    assert all(d["boxes"].shape[0] > 0 for d in out)


@pytest.mark.parametrize("backbone, stride", [("resnet50", 32), ("resnet50_c4", 16)])
def test_resnet50_backbones_run_end_to_end(backbone, stride):
    # just the wiring: build + one tiny train step + one eval pass at 64 px
    model = tiny_model(**{"model.backbone": backbone, "model.min_size": 64, "model.max_size": 64,
                          "roi.batch_size_per_image": 8, "rpn.post_nms_top_n_test": 8})
    assert model.roi_heads.spatial_scale == 1 / stride
    img = torch.rand(3, 64, 64)
    losses = model.train()([img], [target([[8.0, 8.0, 50.0, 40.0]], [1])])
    assert set(losses) == LOSS_NAMES and all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        out = model.eval()([img])
    assert set(out[0]) == {"boxes", "labels", "scores"}


def test_anchor_scales_in_cells_follow_the_backbone_stride():
    model = tiny_model(**{"anchors.unit": "cells", "anchors.scales": [2, 4]})
    assert model.rpn.anchor_generator.scales_px == (32.0, 64.0)
    assert model.rpn.anchor_generator.num_anchors == 6


# ------------------------------------------------------------------------------- overfit test


def shapes_image(seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """256 x 256 noisy grey image with 4 filled shapes: 1 = red rectangle, 2 = green disc,
    3 = blue triangle (apex up); sides 35 to 110 px."""
    rng = np.random.default_rng(seed)
    img = 0.45 + rng.normal(0.0, 0.03, (256, 256, 3))
    yy, xx = np.mgrid[0:256, 0:256] + 0.5                 # pixel centres
    colours = {1: (0.9, 0.1, 0.1), 2: (0.1, 0.85, 0.1), 3: (0.1, 0.1, 0.9)}
    objects = [(1, 20, 20, 110, 70), (2, 150, 30, 230, 110), (3, 40, 130, 150, 240),
               (1, 180, 170, 215, 210)]
    for label, x1, y1, x2, y2 in objects:
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        if label == 1:
            mask = (xx >= x1) & (xx < x2) & (yy >= y1) & (yy < y2)
        elif label == 2:
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= ((x2 - x1) / 2) ** 2
        else:
            half_width = (yy - y1) / (y2 - y1) * (x2 - x1) / 2
            mask = (yy >= y1) & (yy < y2) & (np.abs(xx - cx) <= half_width)
        img[mask] = colours[label]
    image = torch.from_numpy(np.clip(img, 0.0, 1.0)).float().permute(2, 0, 1).contiguous()
    return image, target([o[1:] for o in objects], [o[0] for o in objects])


def test_overfits_one_image_and_finds_every_object():
    """The small backbone from scratch, ~120 Adam steps on one image (CPU, ~25 s on 2 idle
    cores): every object found with IoU > 0.7 and the right label."""
    torch.manual_seed(0)
    np.random.seed(0)
    image, gt = shapes_image()
    cfg = config_from_dict({}, {
        "model.backbone": "resnet18_c4", "model.pretrained": False,
        "model.min_size": 256, "model.max_size": 256,
        "rpn.batch_size_per_image": 64, "rpn.pre_nms_top_n_train": 500, "rpn.post_nms_top_n_train": 100,
        "rpn.pre_nms_top_n_test": 300, "rpn.post_nms_top_n_test": 50,
        "roi.batch_size_per_image": 32, "roi.positive_fraction": 0.5,
    })
    model = build_model(cfg, num_classes=3).train()
    steps = 120
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[90], gamma=0.1)
    for _ in range(steps):
        losses = model([image], [gt])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        schedule.step()
    assert all(torch.isfinite(v) for v in losses.values())

    model.eval()
    with torch.no_grad():
        det = model([image])[0]
    iou = box_iou(gt["boxes"], det["boxes"])              # (4 GT, D detections)
    for g in range(gt["boxes"].shape[0]):
        candidates = torch.where(iou[g] > 0.7)[0]
        assert candidates.numel() > 0, f"object {g} missed (best IoU {iou[g].max().item():.2f})"
        best = candidates[det["scores"][candidates].argmax()]   # the best-scoring match
        assert det["labels"][best].item() == gt["labels"][g].item(), f"object {g}: wrong label"

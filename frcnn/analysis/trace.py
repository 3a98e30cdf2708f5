"""What the detector computed for one image, stage by stage, captured from its real forward pass.

`trace(model, image, gt)` runs the model once in eval mode (what a user gets at test time) and,
when GT is given, once more in training mode under `torch.no_grad` (what the losses see: anchor
labels, sampled anchors, sampled RoIs). Nothing is recomputed beside the model: forward hooks and
thin wrappers around the functions the model itself calls record their inputs and outputs, and
are removed afterwards. The model's weights, BatchNorm statistics and the global RNG are left as
they were.

Shapes: M anchors (H, W, A order), A anchor shapes per feature cell, (H, W) the feature map, k the
proposals kept before NMS, P after, G GT boxes. Boxes are xyxy in the *resized* image's pixels
(`Trace.image_size`), as the model sees them; `Trace.scale` maps them back to the input image.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import frcnn.model.rpn as rpn_module
from frcnn.model.faster_rcnn import FasterRCNN


@dataclass
class TrainingView:
    """What the training losses see for the image (the training-mode pass)."""

    gt_boxes: Tensor          # (G, 4) in resized pixels
    gt_labels: Tensor         # (G,)
    anchor_labels: Tensor     # (M,) 1 positive, 0 negative, -1 ignored
    anchor_matched: Tensor    # (M,) GT index of each anchor, < 0 for unmatched
    rpn_positive: Tensor      # (p,) anchor indices sampled as positives for the RPN loss
    rpn_negative: Tensor      # (n,) anchor indices sampled as negatives
    roi_boxes: Tensor         # (r, 4) RoIs sampled for the second stage (GT appended first)
    roi_labels: Tensor        # (r,) class 1..K foreground, 0 background


@dataclass
class Trace:
    image_size: tuple[int, int]     # (h, w) after the resize
    scale: tuple[float, float]      # (sx, sy): resized pixels -> input pixels
    stride: int                     # feature stride in input-image pixels of the resized image
    feature_shape: tuple[int, ...]  # (C, H, W)
    anchors: Tensor                 # (M, 4)
    num_anchor_shapes: int          # A
    objectness: Tensor              # (A, H, W) logits
    pre_nms_boxes: Tensor           # (k, 4): the top pre_nms_top_n_test by objectness, decoded,
    pre_nms_scores: Tensor          # (k,)    clipped, small ones dropped: what NMS was given
    nms_keep: Tensor                # (P',) indices into pre_nms_* that NMS kept, best first
    proposals: Tensor               # (P, 4): what the second stage received (P <= P')
    detections: dict[str, Tensor]   # boxes (D, 4) in *input* pixels, labels (D,), scores (D,)
    training: TrainingView | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_input(self, boxes: Tensor) -> Tensor:
        """(N, 4) resized-image pixels -> input-image pixels."""
        sx, sy = self.scale
        return boxes * boxes.new_tensor([sx, sy, sx, sy])


class _Recorder:
    """Hooks and wrappers that record calls, all undone by `close`."""

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[tuple, dict, Any]]] = {}
        self._undo: list[Callable[[], None]] = []

    def hook(self, module: nn.Module, name: str) -> None:
        def record(_m: nn.Module, args: tuple, out: Any) -> None:
            self.calls.setdefault(name, []).append((args, {}, out))
        self._undo.append(module.register_forward_hook(record).remove)

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        """Replace `owner.attr` (a module's function or an instance's method) by a recording
        pass-through; an instance attribute shadows the class's method, so deleting it restores."""
        original = getattr(owner, attr)
        had_own = isinstance(owner, nn.Module) and attr in vars(owner)

        def recording(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            self.calls.setdefault(name, []).append((args, kwargs, out))
            return out

        setattr(owner, attr, recording)
        if isinstance(owner, nn.Module) and not had_own:
            self._undo.append(lambda: delattr(owner, attr))
        else:
            self._undo.append(lambda: setattr(owner, attr, original))

    def close(self) -> None:
        while self._undo:
            self._undo.pop()()

    def last(self, name: str) -> tuple[tuple, dict, Any]:
        if name not in self.calls:
            raise RuntimeError(f"trace: the model never called {name}")
        return self.calls[name][-1]


@contextlib.contextmanager
def _recording() -> Iterator[_Recorder]:
    rec = _Recorder()
    try:
        yield rec
    finally:
        rec.close()


@contextlib.contextmanager
def _modes_restored(model: nn.Module) -> Iterator[None]:
    """Every submodule's train/eval mode as it was afterwards (`model.train(flag)` would set all
    of them alike, e.g. wake a backbone the caller had put in eval mode), also on an error."""
    modes = {m: m.training for m in model.modules()}
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


@contextlib.contextmanager
def _training_mode_without_side_effects(model: nn.Module) -> Iterator[None]:
    """Training-mode matching and sampling, test-time resize, BatchNorm statistics untouched."""
    with _modes_restored(model):
        model.train()
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        model.transform.eval()  # the test size, so both passes share one resized image, anchors
        yield


def trace(model: FasterRCNN, image: Tensor, gt: dict[str, Tensor] | None = None,
          seed: int = 0) -> Trace:
    """One image (3, H, W) float in [0, 1] through `model`; `gt` {"boxes" (G, 4) xyxy in the
    image's pixels, "labels" (G,)} adds the training view. `seed` fixes the random sampling of
    anchors and RoIs (the global RNG is restored afterwards)."""
    device = next(model.parameters()).device
    image = image.to(device)
    with torch.inference_mode(), _recording() as rec, _modes_restored(model):
        model.eval()
        rec.hook(model.transform, "transform")
        rec.hook(model.rpn.head, "rpn_head")
        rec.wrap(model.rpn, "propose", "propose")
        rec.wrap(rpn_module, "batched_nms", "rpn_nms")
        rec.wrap(rpn_module, "nms_top_n", "rpn_nms_top_n")
        detections = model([image])[0]

    _, sizes, _ = rec.last("transform")[2]
    objectness_map = rec.last("rpn_head")[2][0]                      # (1, A, H, W)
    (_, _, anchors, _), _, proposals = rec.last("propose")
    if "rpn_nms" in rec.calls:
        (pre_boxes, pre_scores, _, _), _, keep = rec.last("rpn_nms")
    else:  # the RPN stopped NMS at the proposals it keeps: run it through, to show all it keeps
        (pre_boxes, pre_scores, _, _), _, _ = rec.last("rpn_nms_top_n")
        keep = rpn_module.batched_nms(pre_boxes, pre_scores, torch.zeros_like(pre_scores, dtype=torch.int64),
                                      model.rpn.nms_thresh)
    h, w = sizes[0]
    sx, sy = image.shape[-1] / w, image.shape[-2] / h
    feat_h, feat_w = objectness_map.shape[-2:]
    stride = model.rpn.anchor_generator.stride
    out = Trace(image_size=(h, w), scale=(sx, sy), stride=stride,
                feature_shape=tuple(rec.last("rpn_head")[0][0].shape[1:]),
                anchors=anchors.cpu(), num_anchor_shapes=objectness_map.shape[1],
                objectness=objectness_map[0].float().cpu(),
                pre_nms_boxes=pre_boxes.float().cpu(), pre_nms_scores=pre_scores.float().cpu(),
                nms_keep=keep.cpu(), proposals=proposals[0].float().cpu(),
                detections={k: v.cpu() for k, v in detections.items()},
                settings={"pre_nms_top_n": model.rpn.pre_nms_top_n["test"],
                          "post_nms_top_n": model.rpn.post_nms_top_n["test"],
                          "rpn_nms_thresh": model.rpn.nms_thresh,
                          "pos_iou_thresh": model.rpn.pos_iou_thresh,
                          "neg_iou_thresh": model.rpn.neg_iou_thresh,
                          "roi_fg_iou_thresh": model.roi_heads.fg_iou_thresh,
                          "feature_hw": (feat_h, feat_w)})
    if gt is not None:
        out.training = _training_view(model, image, gt, seed)
    return out


def _training_view(model: FasterRCNN, image: Tensor, gt: dict[str, Tensor], seed: int
                   ) -> TrainingView:
    target = {"boxes": gt["boxes"].to(image.device, torch.float32),
              "labels": gt["labels"].to(image.device, torch.int64)}
    # fork_rng saves (and restores) the CPU generator and, on CUDA, the model's device's
    cuda = [image.device.index or 0] if image.device.type == "cuda" else []
    with (torch.no_grad(), torch.random.fork_rng(devices=cuda), _recording() as rec,
          _training_mode_without_side_effects(model)):
        torch.manual_seed(seed)
        rec.hook(model.transform, "transform")
        rec.wrap(model.rpn, "assign_targets", "assign_targets")
        rec.wrap(rpn_module, "sample_balanced", "rpn_sample")
        rec.wrap(model.roi_heads, "sample", "roi_sample")
        model([image], [target])
    resized = rec.last("transform")[2][2][0]
    labels, matched = rec.last("assign_targets")[2]
    pos, neg = rec.last("rpn_sample")[2]
    rois, roi_labels, _ = rec.last("roi_sample")[2]
    return TrainingView(gt_boxes=resized["boxes"].cpu(), gt_labels=resized["labels"].cpu(),
                        anchor_labels=labels.cpu(), anchor_matched=matched.cpu(),
                        rpn_positive=pos.cpu(), rpn_negative=neg.cpu(),
                        roi_boxes=rois.float().cpu(), roi_labels=roi_labels.cpu())


__all__ = ["Trace", "TrainingView", "trace"]

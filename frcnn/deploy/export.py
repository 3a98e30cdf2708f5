"""The detector as one exportable graph: `torch.export` program and ONNX (dynamo exporter).

The trained model's forward takes a list of images of any sizes and returns a list of dicts of any
lengths: fine in Python, not a graph. `ExportableDetector` wraps the same trained modules
(transform constants, backbone, RPN head, RoI box head and predictor) and the same box maths
(`frcnn.ops`), batched, so the graph has one input and fixed-rank outputs:

    images  (N, 3, H, W) float32 in [0, 1]: a batch of equal-sized images, N, H, W dynamic
    ->  boxes  (N, D, 4) float32 xyxy in the input's pixels     D = roi.detections_per_img
        scores (N, D) float32, labels (N, D) int64 (1..K)       best first; rows past `counts`
        counts (N,) int64: the detections of each image         are zeros (padding)

Limits: the batch's images share one size; the torch.export program accepts batch 1..16 and
sides 32..8192 px (ONNX checks neither); NMS runs once over the batch (boxes of different images
shifted apart), so its cost grows with the square of the batch: export for batch 1..8.
What changes against `model(images)`: the RoI op is torchvision's `roi_align` for `align` and
`align_grid` (the same numbers, tests/ops/test_roi_align.py) and `roi_pool` for `pool`; the
per-image loops become index arithmetic. Results equal the PyTorch model's within float32
rounding (tests/deploy/test_export.py).

    frcnn export --format onnx   -> models/model.onnx     (onnxruntime, no torch needed to run it)
    frcnn export --format torch  -> models/model.pt2      (torch.export.load(...).module())
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import torch.nn.functional as F
import typer
from torch import Tensor, nn
from torchvision.ops import nms, roi_align, roi_pool

from frcnn.model.faster_rcnn import FasterRCNN
from frcnn.ops.anchors import base_anchors, grid_anchors
from frcnn.pipeline.command import ParamsOpt, SetOpt

OUTPUTS = ("boxes", "scores", "labels", "counts")
MAX_BATCH, MIN_SIDE, MAX_SIDE = 16, 32, 8192


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou: float) -> Tensor:
    """torchvision's batched NMS by its coordinate trick, always: its other path is picked by a
    data-dependent size test a graph cannot hold. Boxes of different groups are shifted apart so
    they never overlap; kept indices best first."""
    # max over the boxes and a 0: also defined when there are none (no branch in the graph)
    top = torch.cat((boxes.reshape(-1), boxes.new_zeros(1))).max()
    offsets = groups.to(boxes) * (top + 1)
    return nms(boxes + offsets[:, None], scores, iou)


def clip(boxes: Tensor, height: int, width: int) -> Tensor:
    """frcnn.ops.boxes.clip_boxes for one (symbolic) size: clamp keeps the size a graph input,
    where a tensor made of it would freeze it to the traced value."""
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def first_per_group(group: Tensor, num_groups: int | Tensor, k: int) -> tuple[Tensor, Tensor]:
    """For items already in score order, each tagged with its `group` (G,) in 0..num_groups-1:
    (order, rank): `order` lists the items group by group, each group in its original order,
    and `rank` (G,) is each listed item's position within its group (keep rank < k)."""
    # stable by construction (ONNX has no stable sort): the key breaks ties by position
    position = torch.arange(group.shape[0], device=group.device)
    order = torch.argsort(group * (group.shape[0] + 1) + position)
    grouped = group[order]
    counts = torch.zeros(num_groups, dtype=torch.int64, device=group.device).scatter_add_(
        0, grouped, torch.ones_like(grouped))
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(grouped.shape[0], device=group.device) - starts[grouped]
    return order, rank


class ExportableDetector(nn.Module):
    """A trained `FasterRCNN` in eval mode as a batched graph (see the module docstring)."""

    def __init__(self, model: FasterRCNN) -> None:
        super().__init__()
        t, rpn, roi = model.transform, model.rpn, model.roi_heads
        self.backbone, self.rpn_head = model.backbone, rpn.head
        self.box_head, self.predictor = roi.box_head, roi.predictor
        self.register_buffer("mean", t.mean.clone(), persistent=False)
        self.register_buffer("std", t.std.clone(), persistent=False)
        gen = rpn.anchor_generator
        self.register_buffer("base_anchors", base_anchors(gen.scales_px, gen.ratios),
                             persistent=False)
        self.min_size, self.max_size, self.divisible = t.min_size, t.max_size, t.size_divisible
        self.stride = gen.stride
        self.pre_nms, self.post_nms = rpn.pre_nms_top_n["test"], rpn.post_nms_top_n["test"]
        self.rpn_nms, self.min_box = rpn.nms_thresh, rpn.min_box_size
        self.rpn_coder, self.roi_coder = rpn.box_coder, roi.box_coder
        self.op, self.output_size, self.sampling_ratio = roi.op, roi.output_size, roi.sampling_ratio
        self.spatial_scale = roi.spatial_scale
        self.score_thresh, self.nms_thresh = roi.score_thresh, roi.nms_thresh
        self.detections = roi.detections_per_img

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n, _, h, w = images.shape
        batch, (nh, nw) = self._transform(images, h, w)
        features = self.backbone(batch)
        rois, roi_image = self._proposals(features, nh, nw, n)
        x = self.box_head(self._pool(features, rois, roi_image))
        logits, deltas = self.predictor(x)
        return self._detections(logits.float(), deltas.float(), rois, roi_image, n, nh, nw, h, w)

    # -- the stages -----------------------------------------------------------------------------

    def _transform(self, images: Tensor, h: int, w: int) -> tuple[Tensor, tuple[int, int]]:
        """Normalise, resize (short side to min_size, long side at most max_size), pad: what
        ImageTransform does, with the sizes symbolic (torch.sym_min) so they stay dynamic."""
        scale = torch.sym_min(self.min_size / torch.sym_min(h, w), self.max_size / torch.sym_max(h, w))
        x = (images - self.mean) / self.std
        x = F.interpolate(x, scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                          align_corners=False)
        nh, nw = x.shape[-2:]
        d = self.divisible
        pad_w, pad_h = (nw + d - 1) // d * d - nw, (nh + d - 1) // d * d - nh
        return F.pad(x, (0, pad_w, 0, pad_h)), (nh, nw)

    def _proposals(self, features: Tensor, nh: int, nw: int, n: int) -> tuple[Tensor, Tensor]:
        """RPN: top pre_nms by objectness per image, decoded, clipped, small ones dropped, one
        batched NMS, the first post_nms of each image -> rois (R, 4), their image (R,)."""
        objectness, deltas = self.rpn_head(features)
        _, a, fh, fw = objectness.shape
        objectness = objectness.float().permute(0, 2, 3, 1).reshape(n, -1)
        deltas = deltas.float().view(n, a, 4, fh, fw).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
        anchors = grid_anchors(self.base_anchors, (fh, fw), self.stride)
        k = torch.sym_min(self.pre_nms, fh * fw * a)
        scores, idx = objectness.topk(k, dim=1)
        picked = deltas.gather(1, idx[..., None].expand(-1, -1, 4)).reshape(-1, 4)
        boxes = self.rpn_coder.decode(picked, anchors[idx.reshape(-1)]).view(n, k, 4)
        boxes = clip(boxes, nh, nw).reshape(-1, 4)
        image = torch.arange(n, device=boxes.device)[:, None].expand(n, k).reshape(-1)
        scores = scores.reshape(-1)
        wh = boxes[:, 2:] - boxes[:, :2]
        keep = torch.where((wh >= self.min_box).all(dim=1))[0]
        boxes, scores, image = boxes[keep], scores[keep], image[keep]
        keep = batched_nms(boxes, scores, image, self.rpn_nms)
        boxes, image = boxes[keep], image[keep]
        order, rank = first_per_group(image, n, self.post_nms)
        sel = order[rank < self.post_nms]
        return boxes[sel], image[sel]

    def _pool(self, features: Tensor, rois: Tensor, image: Tensor) -> Tensor:
        indexed = torch.cat((image[:, None].to(rois.dtype), rois), dim=1)  # (R, 5)
        size = (self.output_size, self.output_size)
        if self.op == "pool":
            return roi_pool(features.float(), indexed, size, self.spatial_scale).to(features.dtype)
        return roi_align(features, indexed, size, self.spatial_scale, self.sampling_ratio,
                         aligned=True)

    def _detections(self, logits: Tensor, deltas: Tensor, rois: Tensor, image: Tensor, n: int,
                    nh: int, nw: int, h: int, w: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """RoIHeads.postprocess, batched, then the first `detections` of each image, padded."""
        c = logits.shape[1]
        boxes = self.roi_coder.decode(deltas, rois)
        boxes = boxes.view(rois.shape[0], deltas.shape[1] // 4, 4).expand(-1, c, 4)
        boxes = clip(boxes, nh, nw)
        scores = torch.softmax(logits, dim=1)
        labels = torch.arange(c, device=logits.device).expand_as(scores)
        img = image[:, None].expand_as(scores)
        boxes = boxes[:, 1:].reshape(-1, 4)
        scores, labels, img = (t[:, 1:].reshape(-1) for t in (scores, labels, img))
        wh = boxes[:, 2:] - boxes[:, :2]
        keep = torch.where((scores > self.score_thresh) & (wh >= 1e-2).all(dim=1))[0]
        boxes, scores, labels, img = boxes[keep], scores[keep], labels[keep], img[keep]
        keep = batched_nms(boxes, scores, img * c + labels, self.nms_thresh)
        boxes, scores, labels, img = boxes[keep], scores[keep], labels[keep], img[keep]
        order, rank = first_per_group(img, n, self.detections)
        d = self.detections
        # slot of each detection in the padded (N * D) output; those past D go to a spare slot
        slot = torch.where(rank < d, img[order] * d + rank, torch.full_like(rank, n * d))
        b = boxes[order]  # back to the input's pixels
        b = torch.stack((b[:, 0] * (w / nw), b[:, 1] * (h / nh), b[:, 2] * (w / nw),
                         b[:, 3] * (h / nh)), dim=1)
        out_boxes = boxes.new_zeros((n * d + 1, 4)).index_put_((slot,), b)
        out_scores = scores.new_zeros(n * d + 1).index_put_((slot,), scores[order])
        out_labels = labels.new_zeros(n * d + 1).index_put_((slot,), labels[order])
        counts = torch.zeros(n, dtype=torch.int64, device=boxes.device).scatter_add_(
            0, img, torch.ones_like(img)).clamp(max=d)
        return (out_boxes[:-1].view(n, d, 4), out_scores[:-1].view(n, d),
                out_labels[:-1].view(n, d), counts)


def example_batch(model: FasterRCNN, batch: int = 2) -> Tensor:
    """A random batch at the model's test size, for tracing."""
    side = model.transform.min_size
    return torch.rand(batch, 3, side, int(side * 4 / 3), generator=torch.Generator().manual_seed(0))


def _dynamic_shapes() -> dict[str, dict[int, object]]:
    d = torch.export.Dim
    # the torch.export program checks these bounds (ONNX does not); the batch stays small
    # because NMS runs once over the whole batch: its cost grows with the square of the batch
    return {"images": {0: d("batch", min=1, max=MAX_BATCH), 2: d("height", min=MIN_SIDE, max=MAX_SIDE),
                       3: d("width", min=MIN_SIDE, max=MAX_SIDE)}}


def export_program(model: FasterRCNN) -> torch.export.ExportedProgram:
    """`torch.export` of the wrapped detector with dynamic batch, height and width."""
    wrapper = ExportableDetector(model.eval()).eval()
    # size-oblivious: a traced batch of 2 must not bake in "batch != 1" (nor a size != 1)
    from torch.fx.experimental import _config as fx_config

    with torch.no_grad(), fx_config.patch(backed_size_oblivious=True):
        return torch.export.export(wrapper, (example_batch(model),),
                                   dynamic_shapes=_dynamic_shapes())


def _size_check_translations() -> dict:
    """The exporter re-traces and re-creates the size bounds above; a bound past int64 (only
    "unbounded" is that large) translates to a constant instead of an out-of-range constant."""
    import operator

    import onnx
    from onnxscript import opset18 as op

    def bounded(compare):
        def translate(a, b):
            if isinstance(b, int) and abs(b) >= 2**63 - 1:
                holds = compare(0, b)  # any real size is 0..int64 max: the bound's answer
                return op.Constant(value=onnx.helper.make_tensor("c", onnx.TensorProto.BOOL, [],
                                                                 [holds]))
            return {operator.le: op.LessOrEqual, operator.lt: op.Less,
                    operator.ge: op.GreaterOrEqual, operator.gt: op.Greater}[compare](a, b)
        return translate

    return {c: bounded(c) for c in (operator.le, operator.lt, operator.ge, operator.gt)}


def export_onnx(model: FasterRCNN, class_names: list[str], path: Path) -> Path:
    """The ONNX graph (dynamo exporter) at `path`, written atomically, the class names in its
    metadata (what `frcnn predict --model` labels with)."""
    import json
    import tempfile

    import onnx

    from frcnn.deploy.onnx_predict import METADATA_CLASSES
    from frcnn.fileio import atomic_write_bytes

    onnx_program = torch.onnx.export(export_program(model), input_names=["images"],
                                     output_names=list(OUTPUTS), dynamo=True, verbose=False,
                                     custom_translation_table=_size_check_translations())
    with tempfile.TemporaryDirectory() as tmp:
        onnx_program.save(Path(tmp) / "model.onnx")
        proto = onnx.load(Path(tmp) / "model.onnx")
    rpn, roi = model.rpn, model.roi_heads
    settings = {"rpn.pre_nms_top_n_test": rpn.pre_nms_top_n["test"],
                "rpn.post_nms_top_n_test": rpn.post_nms_top_n["test"],
                "rpn.nms_thresh": rpn.nms_thresh, "rpn.min_box_size": rpn.min_box_size,
                "roi.score_thresh": roi.score_thresh, "roi.nms_thresh": roi.nms_thresh,
                "roi.detections_per_img": roi.detections_per_img}
    onnx.helper.set_model_props(proto, {METADATA_CLASSES: json.dumps(list(class_names)),
                                        "frcnn.outputs": ",".join(OUTPUTS),
                                        "frcnn.inference": json.dumps(settings, sort_keys=True)})
    atomic_write_bytes(path, proto.SerializeToString())
    return path


def save_program(model: FasterRCNN, path: Path) -> Path:
    """The `torch.export` program at `path` (`torch.export.load(path).module()(images)`)."""
    import os
    import tempfile

    program = export_program(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.export.save(program, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def command(checkpoint: Annotated[Path, typer.Option(help="trained checkpoint")] = Path("models/model.pt"),
            format: Annotated[str, typer.Option("--format", help="onnx | torch (a torch.export program)")] = "onnx",
            out: Annotated[Path | None, typer.Option(help="output file (default models/model.onnx / .pt2)")] = None,
            params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
            ) -> None:
    """Export the trained detector as one graph with dynamic batch and image size: ONNX (run it
    with `frcnn predict --model model.onnx`, no torch imported) or a torch.export program. The
    inference-only keys (rpn.*_test, roi.score_thresh/nms_thresh/detections_per_img) are baked
    in from --params when that file exists, then --set, as `frcnn predict` takes them."""
    from frcnn.engine.inference import load_detector
    from frcnn.errors import ConfigError
    from frcnn.pipeline.command import user_errors
    from frcnn.pipeline.predict import inference_config

    with user_errors():
        if format not in ("onnx", "torch"):
            raise ConfigError(f"--format {format}: expected onnx or torch")
        model, names = load_detector(checkpoint,
                                     inference=inference_config(params, set_, checkpoint))
        target = out or checkpoint.with_suffix(".onnx" if format == "onnx" else ".pt2")
        if target.resolve() == checkpoint.resolve():
            raise ConfigError(f"--out {target}: is the checkpoint itself")
    if format == "onnx":
        export_onnx(model, names, target)
    else:
        save_program(model, target)
    typer.echo(f"{checkpoint} -> {target} ({format}; inputs images (N, 3, H, W) float in [0, 1]; "
               f"outputs {', '.join(OUTPUTS)})")


__all__ = ["OUTPUTS", "ExportableDetector", "batched_nms", "export_onnx", "export_program",
           "first_per_group", "save_program"]

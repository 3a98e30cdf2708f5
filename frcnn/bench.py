"""Benchmarks against torchvision's Faster R-CNN: same network, only the implementation differs.

`run_bench(quick)` (the `frcnn bench [--quick]` command) measures, as the ratio ours / torchvision:

1. one training step (forward + backward + SGD step) at batch 2;
2. inference latency at batch 1 and throughput at batch 8;
3. peak memory of a training step and of an inference at batch 1;

at two sizes: the reference design's ResNet-50 (C5, stride 32, 2048 channels) at 600/1000 px on
a VOC-sized 500x375 image, and the small default `resnet18_c4` at the embedded size (256 px).
Also the evaluation time of `frcnn.evaluation.voc_metrics` vs pycocotools alone on a VOC-sized
result set, and data-loader images/s vs the model's training images/s. Results go to
`reports/benchmarks.md` and `reports/benchmarks.json`, stamped with the machine, the versions
and the thread count.

How the peer is made equal (`build_pair`): torchvision's `FasterRCNN` gets a deep copy of our
backbone body (the same `nn.Sequential` of ResNet layers, with `out_channels`), an
`AnchorGenerator` with our pixel scales and h/w ratios on the single feature map, the same
proposal counts, NMS, IoU thresholds and sample sizes, `MultiScaleRoIAlign(['0'], S,
sampling_ratio)`, `TwoMLPHead` (= our `MLPHead`) and `FastRCNNPredictor` (= our
`BoxPredictor`), and a `GeneralizedRCNNTransform` with the same min/max size, ImageNet mean/std
and padding multiple. Then every weight and buffer of ours is copied into it, tensor by tensor,
after checking that the shapes agree one to one — so both compute the same function up to the
documented convention differences, and the parameter counts are equal by construction (checked).
Differences the benchmark configuration removes or cannot remove:
- torchvision's `RPNHead` conv is C -> C wide: `rpn.hidden_channels` is set to the backbone's C;
- our `rpn.border_tolerance` (ignore anchors crossing the border) has no torchvision
  equivalent: it is set to -1 (keep all anchors), so both match every anchor;
- torchvision has no RoIPool box head: only `roi.op: align` is benchmarked;
- torchvision has no average-pool head: `roi.head: mlp` at both sizes (the paper setting's
  `avg` head would make ours cheaper still, but would not be a like-for-like comparison);
- left as they are (no effect on the amount of work): anchor centres ((j + 0.5) * stride vs
  j * stride), RoIAlign `aligned=True` vs False, the minimum proposal size (1 px vs 1e-3 px).

Timing: each figure runs ours, torchvision, ours, torchvision, ... in one process, after warm-up,
and reports medians. Memory: one child process per model (so neither sees the other's heap);
on Linux the child resets its peak-RSS counter (`/proc/self/clear_refs`, "5") and reports
`VmHWM - VmRSS before the phase started` (the phase's extra resident memory: activations,
gradients, optimiser state, allocator slack — the weights themselves are in the baseline).
On CUDA: `torch.cuda.max_memory_allocated` in process, and timings with
`torch.cuda.synchronize`, with AMP off and on.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import gc
import importlib.util
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from frcnn.config import Config, config_from_dict, load_config
from frcnn.model.faster_rcnn import FasterRCNN, build_model, count_parameters
from frcnn.model.transform import IMAGENET_MEAN, IMAGENET_STD

REPO_ROOT = Path(__file__).resolve().parents[1]

# name -> (config overrides, image (H, W), number of GT boxes per image, foreground classes)
SIZES: dict[str, dict[str, Any]] = {
    "resnet18_c4 256": {
        "overrides": {"model.backbone": "resnet18_c4", "model.min_size": 256, "model.max_size": 320},
        "image": (256, 256), "gt_per_image": 4, "num_classes": 6,
    },
    "resnet50 600": {
        # the paper's setting (README, "Real VOC on a GPU") with torchvision's head
        "overrides": {"model.backbone": "resnet50", "model.min_size": 600, "model.max_size": 1000,
                      "model.frozen_bn": True, "model.freeze_stem": True,
                      "anchors.unit": "px", "anchors.scales": [128, 256, 512]},
        "image": (375, 500), "gt_per_image": 3, "num_classes": 20,
    },
}

# what every benchmark config shares, whatever params.yaml says (see the module docstring)
COMMON_OVERRIDES: dict[str, Any] = {
    "model.pretrained": False, "rpn.border_tolerance": -1.0, "roi.op": "align", "roi.head": "mlp",
}

CHANNELS = {"resnet18_c4": 256, "resnet50": 2048, "resnet50_c4": 1024}


# ------------------------------------------------------------------ building the pair


def bench_config(size: str, base: Config | None = None) -> Config:
    """The benchmark config of a size: `base` (params.yaml) with the size's and common overrides."""
    spec = SIZES[size]
    raw = base.to_dict() if base is not None else {}
    over = {**COMMON_OVERRIDES, **spec["overrides"]}
    over["rpn.hidden_channels"] = CHANNELS[over["model.backbone"]]
    return config_from_dict(raw, over)


def build_torchvision_peer(cfg: Config, ours: FasterRCNN) -> nn.Module:
    """torchvision's FasterRCNN with our backbone body, anchors, settings and head widths.

    The weights are ours, copied tensor by tensor (shapes checked one to one).
    """
    from torchvision.models.detection import FasterRCNN as TVFasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    m, r, roi = cfg.model, cfg.rpn, cfg.roi
    if roi.op != "align":
        raise ValueError("roi.op: torchvision has no RoIPool box head; benchmark `align` only")
    if roi.head != "mlp":
        raise ValueError("roi.head: torchvision's box head is TwoMLPHead; benchmark `mlp` only")
    body = copy.deepcopy(ours.backbone)
    channels = CHANNELS[m.backbone]
    body.out_channels = channels
    gen = ours.rpn.anchor_generator
    stride = gen.stride
    anchor_generator = TVAnchorGenerator(sizes=(tuple(gen.scales_px),),
                                         aspect_ratios=(tuple(gen.ratios),))
    k = ours.num_classes
    tv = TVFasterRCNN(
        body, num_classes=None, min_size=m.min_size, max_size=m.max_size,
        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
        rpn_anchor_generator=anchor_generator,
        rpn_pre_nms_top_n_train=r.pre_nms_top_n_train, rpn_pre_nms_top_n_test=r.pre_nms_top_n_test,
        rpn_post_nms_top_n_train=r.post_nms_top_n_train,
        rpn_post_nms_top_n_test=r.post_nms_top_n_test,
        rpn_nms_thresh=r.nms_thresh, rpn_fg_iou_thresh=r.pos_iou_thresh,
        rpn_bg_iou_thresh=r.neg_iou_thresh, rpn_batch_size_per_image=r.batch_size_per_image,
        rpn_positive_fraction=r.positive_fraction, rpn_score_thresh=0.0,
        box_roi_pool=MultiScaleRoIAlign(["0"], roi.output_size, roi.sampling_ratio),
        box_head=TwoMLPHead(channels * roi.output_size ** 2, roi.hidden_dim),
        box_predictor=FastRCNNPredictor(roi.hidden_dim, k + 1),
        box_score_thresh=roi.score_thresh, box_nms_thresh=roi.nms_thresh,
        box_detections_per_img=roi.detections_per_img, box_fg_iou_thresh=roi.fg_iou_thresh,
        box_bg_iou_thresh=roi.fg_iou_thresh, box_batch_size_per_image=roi.batch_size_per_image,
        box_positive_fraction=roi.positive_fraction, bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
        size_divisible=stride)
    copy_weights(ours, tv)
    return tv


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy src's state dict into dst's by position; raise if names' shapes differ anywhere."""
    s, d = src.state_dict(), dst.state_dict()
    if len(s) != len(d):
        raise ValueError(f"state dicts differ in length: {len(s)} vs {len(d)}")
    with torch.no_grad():
        for (ks, vs), (kd, vd) in zip(s.items(), d.items()):
            if vs.shape != vd.shape:
                raise ValueError(f"{ks} {tuple(vs.shape)} vs {kd} {tuple(vd.shape)}")
            vd.copy_(vs)


def calibrate_batchnorm(model: FasterRCNN, images: list[Tensor]) -> None:
    """Set every BatchNorm's running mean/var to the statistics of its input on `images`.

    Without ImageNet weights (no internet here) an untrained ResNet's eval-mode BatchNorm (mean 0,
    var 1) does not normalise, activations grow block by block, the RPN's deltas explode, boxes
    collapse onto the image border and NMS leaves ~20 proposals instead of 300: a workload
    unlike a real detector's. One pass with these hooks gives normalised features, like
    pretrained weights would.
    """
    from torchvision.ops import FrozenBatchNorm2d

    def pre(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        x = args[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))

    handles = [m.register_forward_pre_hook(pre) for m in model.backbone.modules()
               if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            batch, _, _ = model.transform(images)
            model.backbone(batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def build_pair(size: str, base: Config | None = None, seed: int = 0
               ) -> tuple[FasterRCNN, nn.Module, Config]:
    """(ours, torchvision's, config) for a size; raises if the parameter counts differ."""
    cfg = bench_config(size, base)
    torch.manual_seed(seed)
    ours = build_model(cfg, num_classes=SIZES[size]["num_classes"])
    calibrate_batchnorm(ours, make_inputs(size, 2, seed=seed + 100)[0])
    tv = build_torchvision_peer(cfg, ours)
    n_ours, n_tv = count_parameters(ours), count_parameters(tv)
    if n_ours != n_tv:
        raise AssertionError(f"{size}: parameter counts differ: ours {n_ours}, torchvision {n_tv}")
    return ours, tv, cfg


def make_inputs(size: str, batch: int, seed: int = 0, device: str = "cpu"
                ) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """`batch` random images of the size's shape, each with random GT boxes and labels."""
    spec = SIZES[size]
    h, w = spec["image"]
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, h, w, generator=g).to(device))
        n = spec["gt_per_image"]
        wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5]) + torch.tensor([w, h]) * 0.1
        xy = torch.rand(n, 2, generator=g) * (torch.tensor([w, h]) - wh)
        boxes = torch.cat((xy, xy + wh), dim=1)
        labels = torch.randint(1, spec["num_classes"] + 1, (n,), generator=g)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets


# ------------------------------------------------------------------ one step of each kind


def _autocast(device: str, amp: bool):
    if amp and device == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def make_train_step(model: nn.Module, images, targets, device: str = "cpu", amp: bool = False
                    ) -> Callable[[], None]:
    """One forward + backward + SGD step (momentum, weight decay) on a fixed batch."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # lr small so that the weights (and hence the proposals) hardly drift between repeats
    opt = torch.optim.SGD(params, lr=1e-5, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda") if (amp and device == "cuda") else None

    def step() -> None:
        model.train()
        with _autocast(device, amp):
            losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    return step


def make_infer(model: nn.Module, images, device: str = "cpu", amp: bool = False
               ) -> Callable[[], None]:
    model.eval()

    def infer() -> None:
        model.eval()
        with torch.inference_mode(), _autocast(device, amp):
            model(images)

    return infer


def alternate(fns: dict[str, Callable[[], None]], warmup: int, repeats: int,
              sync: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Run the callables in turn (a, b, a, b, ...): `warmup` untimed rounds, then `repeats` timed."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def ratio_record(figure: str, size: str, ours: list[float], tv: list[float], unit: str = "s",
                 per: int = 1, **extra: Any) -> dict[str, Any]:
    """A figure's record: medians, ratio ours / torchvision (< 1: ours is faster/smaller).

    For `unit="images/s"` the lists are seconds per call of `per` images; the medians are turned
    into images/s but the ratio stays a ratio of times, so < 1 means ours is better everywhere.
    """
    mo, mt = statistics.median(ours), statistics.median(tv)
    # paired: ours_i / tv_i of the same round, robust to the load drifting during the run
    paired = statistics.median(o / t for o, t in zip(ours, tv)) if all(tv) else math.nan
    rec = {"figure": figure, "size": size, "unit": unit, "ratio": mo / mt if mt else math.nan,
           "ratio_paired": paired,
           "ours_samples": [round(x, 5) for x in ours], "tv_samples": [round(x, 5) for x in tv],
           **extra}
    if unit == "images/s":
        rec["ours"], rec["torchvision"] = per / mo, per / mt
    else:
        rec["ours"], rec["torchvision"] = mo, mt
    return rec


def format_record(rec: dict[str, Any]) -> str:
    """`train_step resnet18_c4 256: ours 0.93 s, torchvision 0.95 s, ratio 0.98`."""
    label = f"{rec['figure']} {rec['size']}"
    if rec.get("device", "cpu") != "cpu":
        label += f" {rec['device']}" + (" amp" if rec.get("amp") else "")
    if rec.get("skipped"):
        return f"{label}: skipped ({rec['skipped']})"
    unit = rec["unit"]
    if "torchvision" not in rec or rec.get("torchvision") is None:
        return f"{label}: ours {_fmt(rec['ours'], unit)}"
    peer = rec.get("peer", "torchvision")
    line = (f"{label}: ours {_fmt(rec['ours'], unit)}, {peer} {_fmt(rec['torchvision'], unit)}, "
            f"ratio {rec['ratio']:.2f}")
    if rec.get("ratio_paired") is not None and len(rec.get("ours_samples", ())) > 1:
        line += f" (paired {rec['ratio_paired']:.2f})"
    return line


def _fmt(x: float, unit: str) -> str:
    if unit == "s":
        return f"{x:.3f} s" if x < 10 else f"{x:.1f} s"
    if unit == "MiB":
        return f"{x:.0f} MiB"
    return f"{x:.1f} {unit}"


# ------------------------------------------------------------------ memory


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_supported() -> bool:
    return sys.platform.startswith("linux") and _reset_peak()


def _memory_child() -> None:
    """Child process: `python -c ... <json>`; prints {"infer_b1": MiB, "train_step": MiB}."""
    args = json.loads(sys.argv[1])
    torch.set_num_threads(args["threads"])
    base = config_from_dict(args["config"])
    ours, tv, _ = build_pair(args["size"], base)
    model = ours if args["impl"] == "ours" else tv
    del ours, tv
    gc.collect()
    images, targets = make_inputs(args["size"], args["batch"])
    one = images[:1]
    out = {}
    infer = make_infer(model, one)
    baseline = _rss_kib("VmRSS")
    _reset_peak()
    infer()
    out["infer_b1"] = (_rss_kib("VmHWM") - baseline) / 1024
    step = make_train_step(model, images, targets)
    _reset_peak()
    for _ in range(2):  # the second step has the momentum buffers of the first
        step()
    out["train_step"] = (_rss_kib("VmHWM") - baseline) / 1024
    print("MEMORY " + json.dumps(out))


def measure_memory_cpu(size: str, impl: str, base: Config, batch: int = 2) -> dict[str, float]:
    """Peak extra RSS (MiB) of inference at batch 1 and of two train steps, in a child process."""
    arg = json.dumps({"size": size, "impl": impl, "config": base.to_dict(), "batch": batch,
                      "threads": torch.get_num_threads()})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    proc = subprocess.run([sys.executable, "-c", "from frcnn.bench import _memory_child; _memory_child()",
                           arg], capture_output=True, text=True, env=env, timeout=900)
    for line in proc.stdout.splitlines():
        if line.startswith("MEMORY "):
            return json.loads(line[len("MEMORY "):])
    raise RuntimeError(f"memory child for {size} {impl} failed:\n{proc.stderr[-2000:]}")


def measure_memory_cuda(model: nn.Module, fn: Callable[[], None]) -> float:
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


# ------------------------------------------------------------------ profiler


def _stage_hooks(model: nn.Module) -> list[Any]:
    """record_function scopes `stage:<name>` around the model's top-level children's forward."""
    handles = []
    for name in ("transform", "backbone", "rpn", "roi_heads"):
        module = getattr(model, name, None)
        if module is None:
            continue
        scope: list[Any] = []

        def pre(_m, _a, name=name, scope=scope):
            rf = torch.autograd.profiler.record_function(f"stage:{name}")
            rf.__enter__()
            scope.append(rf)

        def post(_m, _a, _o, scope=scope):
            scope.pop().__exit__(None, None, None)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    return handles


def profile_step(model: nn.Module, fn: Callable[[], None], top: int = 12) -> dict[str, Any]:
    """One profiled call of `fn`: forward stage times (ms) and the top ops by self CPU time (ms)."""
    from torch.profiler import ProfilerActivity, profile

    handles = _stage_hooks(model)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
    finally:
        for h in handles:
            h.remove()
    events = prof.key_averages()
    stages = {e.key[len("stage:"):]: e.cpu_time_total / 1e3 for e in events
              if e.key.startswith("stage:")}
    ops = sorted((e for e in events if not e.key.startswith("stage:")),
                 key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    total = sum(e.self_cpu_time_total for e in events if not e.key.startswith("stage:")) / 1e3
    return {"stages_ms": {k: round(v, 1) for k, v in stages.items()},
            "top_ops": [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3, 1),
                         "calls": e.count} for e in ops],
            "total_self_ms": round(total, 1)}


# ------------------------------------------------------------------ evaluation time


def synthetic_results(num_images: int = 5000, seed: int = 0, num_classes: int = 20
                      ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A VOC-sized COCO-format GT (~3 boxes/image, 5 % difficult) and noisy detections for it."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []
    for i in range(1, num_images + 1):
        images.append({"id": i, "file_name": f"{i:06d}.jpg", "width": 500, "height": 375})
        for _ in range(max(1, int(rng.poisson(3.0)))):
            w, h = rng.uniform(20, 300), rng.uniform(20, 250)
            x, y = rng.uniform(0, 500 - w), rng.uniform(0, 375 - h)
            cat = int(rng.integers(1, num_classes + 1))
            difficult = int(rng.random() < 0.05)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat,
                         "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                         "area": round(w * h, 2), "iscrowd": difficult, "difficult": difficult})
            for _ in range(int(rng.integers(0, 3))):  # 0-2 detections near each object
                j = rng.normal(0, 0.1, 4) * [w, h, w, h]
                results.append({"image_id": i, "category_id": cat if rng.random() < 0.85
                                else int(rng.integers(1, num_classes + 1)),
                                "bbox": [round(float(x + j[0]), 2), round(float(y + j[1]), 2),
                                         round(float(max(w + j[2], 2)), 2),
                                         round(float(max(h + j[3], 2)), 2)],
                                "score": round(float(rng.random()), 5)})
        for _ in range(int(rng.integers(0, 3))):  # false positives anywhere
            w, h = rng.uniform(10, 200), rng.uniform(10, 200)
            results.append({"image_id": i, "category_id": int(rng.integers(1, num_classes + 1)),
                            "bbox": [round(float(rng.uniform(0, 500 - w)), 2),
                                     round(float(rng.uniform(0, 375 - h)), 2),
                                     round(float(w), 2), round(float(h), 2)],
                            "score": round(float(rng.random() * 0.5), 5)})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": c, "name": f"class{c}", "supercategory": "none"}
                         for c in range(1, num_classes + 1)]}
    return gt, results


def pycocotools_eval(gt: dict[str, Any], results: list[dict[str, Any]]) -> float:
    """pycocotools alone: index GT, load results, evaluate, accumulate, summarise -> mAP."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        dt = coco.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def bench_evaluation(num_images: int, repeats: int = 1) -> list[dict[str, Any]]:
    size = f"{num_images} images"
    try:
        from frcnn.evaluation import voc_metrics
    except ImportError as exc:
        return [{"figure": "eval_time", "size": size, "unit": "s",
                 "skipped": f"frcnn.evaluation.voc_metrics is not importable ({exc})"}]
    gt, results = synthetic_results(num_images)
    times = alternate({"ours": lambda: voc_metrics(copy.deepcopy(gt), copy.deepcopy(results)),
                       "tv": lambda: pycocotools_eval(gt, results)}, warmup=0, repeats=repeats)
    return [ratio_record("eval_time", size, times["ours"], times["tv"], peer="pycocotools",
                         gt_boxes=len(gt["annotations"]), detections=len(results),
                         note="ours: frcnn.evaluation.voc_metrics (VOC07 11-point + VOC10 AP50); "
                              "pycocotools: COCOeval bbox (10 IoUs, 4 areas), loading included; "
                              "both timed on their own deep copies")]


# ------------------------------------------------------------------ data loader


def _load_dataloader_bench():
    path = REPO_ROOT / "benchmarks" / "bench_dataloader.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("frcnn_bench_dataloader", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def bench_dataloader(num_images: int, workers: list[int], batch_size: int) -> list[dict[str, Any]]:
    module = _load_dataloader_bench()
    if module is None:
        return [{"figure": "dataloader", "size": "synth 256", "unit": "images/s",
                 "skipped": "benchmarks/bench_dataloader.py not found"}]
    from frcnn.data.dataset import DetectionDataset

    out = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        dataset = DetectionDataset(module.synth_json(Path(tmp), num_images), train=True, hflip=True)
        for w in workers:
            rate = module.measure(dataset, w, batch_size, min(num_images, len(dataset)))
            out.append({"figure": "dataloader", "size": f"synth 256 workers={w}",
                        "unit": "images/s", "ours": rate, "torchvision": None, "ratio": None,
                        "batch_size": batch_size})
    return out


# ------------------------------------------------------------------ the whole run


def machine_info() -> dict[str, Any]:
    import torchvision

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision.__version__}
    try:
        import pycocotools  # noqa: F401
        from importlib.metadata import version

        versions["pycocotools"] = version("pycocotools")
    except Exception:  # noqa: BLE001 - optional
        versions["pycocotools"] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    info = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "cuda": torch.cuda.is_available(), "versions": versions, "git_commit": commit}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _emit(records: list[dict[str, Any]], new: list[dict[str, Any]] | dict[str, Any]) -> None:
    for rec in new if isinstance(new, list) else [new]:
        records.append(rec)
        print(format_record(rec), flush=True)


def _measure_pair(records: list[dict[str, Any]], info: dict[str, Any], figure: str,
                  memory_figure: str, size: str, fns: dict[str, Callable[[], None]],
                  models: tuple[nn.Module, nn.Module], reps: int, batch: int,
                  sync: Callable[[], None], profile: bool, tag: dict[str, Any]) -> None:
    """Time `fns` (ours, tv) alternately; optionally profile them; on CUDA also peak memory."""
    t = alternate(fns, warmup=1, repeats=reps, sync=sync)
    _emit(records, ratio_record(figure, size, t["ours"], t["tv"], batch=batch, **tag))
    ours, tv = models
    if profile:
        info[f"profile_{figure}"] = {"ours": profile_step(ours, fns["ours"]),
                                     "torchvision": profile_step(tv, fns["tv"])}
    if tag["device"] == "cuda":
        mem = {k: measure_memory_cuda(m, fns[k]) for k, m in (("ours", ours), ("tv", tv))}
        _emit(records, {"figure": memory_figure, "size": size, "unit": "MiB",
                        "ours": mem["ours"], "torchvision": mem["tv"],
                        "ratio": mem["ours"] / mem["tv"], "method": "cuda max_memory_allocated",
                        **tag})


def bench_size(size: str, base: Config, quick: bool, device: str, amp: bool,
               profile: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The time figures of one size on one device; returns (records, info incl. param counts)."""
    records: list[dict[str, Any]] = []
    ours, tv, cfg = build_pair(size, base)
    n_params = count_parameters(ours)
    info = {"size": size, "params_ours": n_params, "params_torchvision": count_parameters(tv),
            "trainable_ours": sum(p.numel() for p in ours.parameters() if p.requires_grad),
            "trainable_torchvision": sum(p.numel() for p in tv.parameters() if p.requires_grad),
            "config": {k: v for k, v in cfg.flat().items()
                       if k.split(".")[0] in ("model", "anchors", "rpn", "roi")}}
    print(f"params {size}: ours {n_params:,}, torchvision {info['params_torchvision']:,} "
          f"({'equal' if n_params == info['params_torchvision'] else 'DIFFERENT'})", flush=True)
    ours.to(device)
    tv.to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    big = size.startswith("resnet50")
    tag = {"device": device, "amp": amp, "threads": torch.get_num_threads()}

    images, targets = make_inputs(size, 2, device=device)
    reps = (2 if big else 3) if quick else (4 if big else 10)
    steps = {"ours": make_train_step(ours, images, targets, device, amp),
             "tv": make_train_step(tv, images, targets, device, amp)}
    _measure_pair(records, info, "train_step", "peak_memory_train", size, steps, (ours, tv),
                  reps, 2, sync, profile, tag)
    del steps
    gc.collect()

    one = images[:1]
    infer = {"ours": make_infer(ours, one, device, amp), "tv": make_infer(tv, one, device, amp)}
    reps = (3 if big else 5) if quick else (8 if big else 20)
    _measure_pair(records, info, "infer_b1", "peak_memory_infer_b1", size, infer, (ours, tv),
                  reps, 1, sync, profile, tag)

    if quick and big and device == "cpu":
        _emit(records, {"figure": "throughput_b8", "size": size, "unit": "images/s",
                        "skipped": "--quick skips batch-8 throughput at resnet50 on CPU", **tag})
    else:
        images8, _ = make_inputs(size, 8, seed=1, device=device)
        infer8 = {"ours": make_infer(ours, images8, device, amp),
                  "tv": make_infer(tv, images8, device, amp)}
        reps = (2 if big else 3) if quick else (3 if big else 8)
        t = alternate(infer8, warmup=1, repeats=reps, sync=sync)
        _emit(records, ratio_record("throughput_b8", size, t["ours"], t["tv"], unit="images/s",
                                    per=8, batch=8, **tag))
    del ours, tv
    gc.collect()
    return records, info


def run_bench(quick: bool, out_dir: Path = Path("reports"),
              config_path: Path = Path("params.yaml")) -> list[dict[str, Any]]:
    """Run every figure, print one line each, write `out_dir`/benchmarks.{md,json}; the records.

    --quick (about 2 minutes on 2 CPU cores): fewer repeats (resnet50: 1 warm-up + 2 timed train
    steps, 3 inferences), no batch-8 throughput and no peak memory at resnet50 on CPU, no
    profiler, evaluation on 1000 images instead of 5000, data loader over 64 images.
    """
    t_start = time.perf_counter()
    base = load_config(config_path) if Path(config_path).is_file() else config_from_dict({})
    meta = machine_info()
    meta["quick"] = quick
    print(f"frcnn bench{' --quick' if quick else ''}: {meta['cpu']}, {meta['threads']} threads, "
          f"torch {meta['versions']['torch']}, torchvision {meta['versions']['torchvision']}; "
          + ("CUDA: " + meta["gpu"] if meta["cuda"] else "no CUDA: CPU figures only"), flush=True)
    records: list[dict[str, Any]] = []
    sizes_info = []
    devices = [("cpu", False)]
    if torch.cuda.is_available():
        devices += [("cuda", False), ("cuda", True)]
    for device, amp in devices:
        for size in SIZES:
            recs, info = bench_size(size, base, quick, device, amp,
                                    profile=(not quick and device == "cpu"))
            records.extend(recs)
            if device == "cpu":
                sizes_info.append(info)

    # peak memory on CPU: one child process per model
    for size in SIZES:
        tag = {"device": "cpu", "amp": False, "threads": torch.get_num_threads()}
        if not memory_supported():
            _emit(records, {"figure": "peak_memory", "size": size, "unit": "MiB",
                            "skipped": "needs Linux /proc/self/clear_refs", **tag})
            continue
        if quick and size.startswith("resnet50"):
            _emit(records, {"figure": "peak_memory", "size": size, "unit": "MiB",
                            "skipped": "--quick skips peak memory at resnet50", **tag})
            continue
        mem = {impl: measure_memory_cpu(size, impl, base) for impl in ("ours", "tv")}
        for phase in ("train_step", "infer_b1"):
            o, p = mem["ours"][phase], mem["tv"][phase]
            _emit(records, {"figure": f"peak_memory_{phase}", "size": size, "unit": "MiB",
                            "ours": o, "torchvision": p, "ratio": o / p if p > 0 else math.nan,
                            "method": "child process, VmHWM - VmRSS before the phase", **tag})

    _emit(records, bench_evaluation(1000 if quick else 5000))

    loader = bench_dataloader(64 if quick else 256, [0, base.train.num_workers] if
                              base.train.num_workers else [0], base.train.batch_size)
    _emit(records, loader)
    train = next((r for r in records if r["figure"] == "train_step" and r.get("device") == "cpu"
                  and r["size"].startswith("resnet18_c4")), None)
    if train is not None and not any(r.get("skipped") for r in loader):
        _emit(records, {"figure": "model_train", "size": "resnet18_c4 256 batch 2",
                        "unit": "images/s", "ours": 2 / train["ours"],
                        "torchvision": 2 / train["torchvision"], "ratio": train["ratio"],
                        "device": "cpu", "note": "training images/s from the train_step figure"})

    meta["seconds"] = round(time.perf_counter() - t_start, 1)
    write_report(records, meta, sizes_info, Path(out_dir))
    print(f"wrote {Path(out_dir) / 'benchmarks.md'} and .json ({meta['seconds']} s)", flush=True)
    return records


# ------------------------------------------------------------------ report


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


def write_report(records: list[dict[str, Any]], meta: dict[str, Any],
                 sizes: list[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """`out_dir`/benchmarks.json (everything) and benchmarks.md (tables and method notes)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "benchmarks.json"
    js.write_text(json.dumps({"meta": meta, "sizes": sizes, "records": records}, indent=1,
                             default=_json_default) + "\n")
    v = meta.get("versions", {})
    lines = [
        "# Benchmarks: ours vs torchvision's Faster R-CNN",
        "",
        f"Written by `frcnn bench{' --quick' if meta.get('quick') else ''}` on {meta.get('date')} "
        f"in {meta.get('seconds', '?')} s.",
        "",
        f"- machine: {meta.get('cpu')} ({meta.get('cpu_count')} CPUs), {meta.get('platform')}",
        f"- threads: torch.get_num_threads() = {meta.get('threads')} (interop "
        f"{meta.get('interop_threads')}), the same for both models",
        f"- versions: python {v.get('python')}, torch {v.get('torch')}, torchvision "
        f"{v.get('torchvision')}, pycocotools {v.get('pycocotools')}; git {meta.get('git_commit')}",
        "- device: " + (f"CUDA ({meta.get('gpu')}) and CPU" if meta.get("cuda")
                        else "CPU only (no CUDA on this machine: no GPU figures)"),
        "",
        "Ratio = ours / torchvision of the median time (or of peak memory): below 1.0 ours is "
        "faster (smaller). Paired ratio = median over rounds of ours_i / torchvision_i, the two "
        "timed back to back: robust when the machine's load drifts during a figure (this one is "
        "shared). images/s figures show images per second, their ratios are still ratios of times.",
        "",
        "| figure | size | device | ours | torchvision | ratio | paired ratio | samples |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        dev = r.get("device", "cpu") + (" amp" if r.get("amp") else "")
        if r.get("skipped"):
            lines.append(f"| {r['figure']} | {r['size']} | {dev} | skipped: {r['skipped']} | | | | |")
            continue
        unit = r["unit"]
        peer = r.get("torchvision")
        peer_s = "—" if peer is None else _fmt(peer, unit)
        if r.get("peer") and peer is not None:
            peer_s += f" ({r['peer']})"
        ratio = "—" if r.get("ratio") is None else f"{r['ratio']:.2f}"
        n = (f"{len(r['ours_samples'])} / {len(r['tv_samples'])}" if "ours_samples" in r else "1")
        paired = f"{r['ratio_paired']:.2f}" if r.get("ratio_paired") is not None else "—"
        lines.append(f"| {r['figure']} | {r['size']} | {dev} | {_fmt(r['ours'], unit)} | {peer_s} "
                     f"| {ratio} | {paired} | {n} |")
    lines += ["", "## Parameter counts", "",
              "| size | ours | torchvision | trainable (ours / tv) |", "|---|---|---|---|"]
    for s in sizes:
        lines.append(f"| {s['size']} | {s['params_ours']:,} | {s['params_torchvision']:,} | "
                     f"{s['trainable_ours']:,} / {s['trainable_torchvision']:,} |")
    for s in sizes:
        for key, title in (("profile_train_step", "train step"), ("profile_infer_b1", "inference b1")):
            prof = s.get(key)
            if not prof:
                continue
            lines += ["", f"## Profile: {s['size']}, {title} (one call, torch.profiler, CPU)", "",
                      "Forward stages (ms, inclusive): "
                      + "; ".join(f"{impl}: " + ", ".join(f"{k} {v:.0f}" for k, v in
                                                           prof[impl]["stages_ms"].items())
                                  for impl in ("ours", "torchvision")), "",
                      "| ours: op | self ms | calls | torchvision: op | self ms | calls |",
                      "|---|---|---|---|---|---|"]
            for a, b in zip(prof["ours"]["top_ops"], prof["torchvision"]["top_ops"]):
                lines.append(f"| {a['op']} | {a['self_ms']} | {a['calls']} | {b['op']} | "
                             f"{b['self_ms']} | {b['calls']} |")
            lines.append(f"| total self | {prof['ours']['total_self_ms']} | | total self | "
                         f"{prof['torchvision']['total_self_ms']} | |")
    lines += ["", "## Method", "", *[f"- {x}" for x in METHOD_NOTES], ""]
    md = out_dir / "benchmarks.md"
    md.write_text("\n".join(lines))
    return md, js


METHOD_NOTES = [
    "Peer: torchvision.models.detection.FasterRCNN with a deep copy of our backbone body "
    "(nn.Sequential of ResNet layers, `out_channels`), AnchorGenerator with our pixel scales and "
    "h/w ratios on the one feature map, our proposal counts, NMS and IoU thresholds and sample "
    "sizes, MultiScaleRoIAlign(['0'], 7, 2), TwoMLPHead (= MLPHead), FastRCNNPredictor "
    "(= BoxPredictor), GeneralizedRCNNTransform(min, max, ImageNet mean/std, padding to the "
    "stride). All weights and buffers are copied from ours (shapes checked one to one), so the "
    "parameter counts are equal by construction and both see the same scores.",
    "rpn.hidden_channels = backbone channels (torchvision's RPNHead conv is C -> C).",
    "rpn.border_tolerance = -1: our rule that ignores anchors crossing the border has no "
    "torchvision equivalent, so both match every anchor.",
    "roi.op = align only: torchvision has no RoIPool box head. roi.head = mlp at both sizes "
    "(torchvision has no average-pool head), so the resnet50 figures use a 100352 -> 512 fc6.",
    "resnet50 600: the README's paper setting (frozen BN, frozen stem, anchors 128/256/512 px), "
    "500x375 image -> 800x600 (padded to 800x608), 3 GT boxes; resnet18_c4 256: 256x256 image, "
    "4 GT boxes. Random images and random (but identical) weights; without ImageNet weights the "
    "backbone's BatchNorm statistics are set from one calibration batch (`calibrate_batchnorm`) "
    "so that features are normalised and the RPN keeps its full 300 (test) / 2000 (train) "
    "proposals, as a real detector does. Class scores are near uniform: with 7 classes every "
    "RoI passes the 0.05 score threshold (100 detections per image), with 21 few do.",
    "The profile tables are single profiled calls on a shared 2-core machine: identical ops "
    "(the backbone's convolutions run the same module in both) vary by several x between calls, "
    "so read them for ops that differ in kind or call count, not for the time of shared ops.",
    "Timing: ours, torchvision, ours, torchvision, ... in one process after one warm-up round; "
    "medians. Train step = forward + sum of losses + backward + SGD(momentum 0.9, wd 1e-4) step "
    "at batch 2. Inference under torch.inference_mode, batch 1 (latency) and 8 (throughput).",
    "Peak memory (CPU): a child process per model builds it, records VmRSS, resets the peak "
    "counter (/proc/self/clear_refs = 5) and reports VmHWM minus that baseline for an inference at "
    "batch 1 and then for two train steps at batch 2 (weights are in the baseline; activations, "
    "gradients, momentum buffers and allocator slack are not). On CUDA: max_memory_allocated.",
    "Evaluation: ours = frcnn.evaluation.voc_metrics(gt, results); peer = pycocotools COCOeval "
    "(loadRes + evaluate + accumulate + summarize) on the same synthetic VOC-sized set.",
    "Data loader: benchmarks/bench_dataloader.py's measure() on a generated synth set (first "
    "epoch, worker start-up included) vs the model's training images/s at batch 2.",
]

"""Benchmarks against torchvision's Faster R-CNN: same network, only the implementation differs.

`run_bench(quick, out_dir, config_path)` (the `frcnn bench [--quick]` command) measures, as the
ratio ours / torchvision:

1. one training step (forward + backward + SGD step) at batch 2;
2. inference latency at batch 1 and throughput at batch 8;
3. peak memory of a training step and of an inference at batch 1;
4. "what a user runs" (`benchmarks.bench_recipe`): the default recipe of params.yaml (align_grid,
   channels-last, its autocast) against torchvision given the same trunk and switches, and
   `frcnn evaluate`'s inference over the test split end to end;
5. (full run) where the time goes, stage by stage, with FLOPs against the CPU's peak
   (`benchmarks.breakdown` -> breakdown.{md,json,png});

at two sizes: the reference design's ResNet-50 (C5, stride 32, 2048 channels) at 600/1000 px on
a VOC-sized 500x375 image, and the small default `resnet18_c4` at the embedded size (256 px).
Also the evaluation time of `frcnn.evaluation.voc.voc_metrics` vs pycocotools alone on a
VOC-sized result set, and data-loader images/s vs the model's training images/s. Results go to
`reports/benchmarks.md` and `reports/benchmarks.json`, stamped with the machine, the versions
and the thread count.

How the peer is made equal: `benchmarks.peer`; timing: `benchmarks.timing`; memory:
`benchmarks.memory`; the profiler: `benchmarks.profiling`.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from benchmarks.bench_dataloader import loader_records
from benchmarks.bench_evaluation import eval_time_records
from benchmarks.bench_export import bench_export
from benchmarks.bench_recipe import bench_recipe
from benchmarks.memory import emit_cpu_memory, measure_memory_cuda
from benchmarks.peer import SIZES, build_pair, build_torchvision_peer, make_inputs
from benchmarks.profiling import profile_step
from benchmarks.timing import (emit, format_value, instrument_record, interleaved, make_infer,
                               make_train_step)
from frcnn.config import Config, config_from_dict, load_config
from frcnn.model.faster_rcnn import count_parameters
from frcnn.tools.study import cpu_model

REPO_ROOT = Path(__file__).resolve().parents[1]


def machine_info() -> dict[str, Any]:
    import torchvision

    cpu = cpu_model()
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


# ------------------------------------------------------------------ the time figures of a size


def rounds_plan(quick: bool, big: bool) -> dict[str, Any]:
    """How long `interleaved` may time one figure: (min rounds, budget s, target precision)."""
    if quick:
        return {"min_rounds": 3 if big else 5, "budget_s": 40.0 if big else 15.0, "precision": 0.03}
    return {"min_rounds": 6 if big else 10, "budget_s": 240.0 if big else 90.0, "precision": 0.02}


def _measure_pair(records: list[dict[str, Any]], info: dict[str, Any], figure: str,
                  memory_figure: str, size: str, fns: dict[str, Callable[[], None]],
                  models: tuple[nn.Module, nn.Module], plan: dict[str, Any], batch: int,
                  sync: Callable[[], None], profile: bool, tag: dict[str, Any]) -> None:
    """Time `fns` (ours, tv, aa) in interleaved rounds; optionally profile ours and tv; on CUDA
    also peak memory."""
    t = interleaved(fns, warmup=1, sync=sync, **plan)
    emit(records, instrument_record(figure, size, t, batch=batch, **tag))
    ours, tv = models
    if profile:
        info[f"profile_{figure}"] = {"ours": profile_step(ours, fns["ours"]),
                                     "torchvision": profile_step(tv, fns["tv"])}
    if tag["device"] == "cuda":
        mem = {k: measure_memory_cuda(m, fns[k]) for k, m in (("ours", ours), ("tv", tv))}
        emit(records, {"figure": memory_figure, "size": size, "unit": "MiB",
                       "ours": mem["ours"], "torchvision": mem["tv"],
                       "ratio": mem["ours"] / mem["tv"], "method": "cuda max_memory_allocated",
                       **tag})


def _size_info(size: str, ours: nn.Module, tv: nn.Module, cfg: Config) -> dict[str, Any]:
    """Parameter counts and the model part of the config of a size; prints the counts."""
    n_ours, n_tv = count_parameters(ours), count_parameters(tv)
    print(f"params {size}: ours {n_ours:,}, torchvision {n_tv:,} "
          f"({'equal' if n_ours == n_tv else 'DIFFERENT'})", flush=True)
    return {"size": size, "params_ours": n_ours, "params_torchvision": n_tv,
            "trainable_ours": sum(p.numel() for p in ours.parameters() if p.requires_grad),
            "trainable_torchvision": sum(p.numel() for p in tv.parameters() if p.requires_grad),
            "config": {k: v for k, v in cfg.flat().items()
                       if k.split(".")[0] in ("model", "anchors", "rpn", "roi")}}


def bench_size(size: str, base: Config, quick: bool, device: str, amp: bool,
               profile: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The time figures of one size on one device; returns (records, info incl. param counts)."""
    records: list[dict[str, Any]] = []
    ours, tv, cfg = build_pair(size, base)
    # the A/A peer: a second, identical torchvision model, timed in the same rounds
    aa = build_torchvision_peer(cfg, ours)
    info = _size_info(size, ours, tv, cfg)
    for m in (ours, tv, aa):
        m.to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    big = size.startswith("resnet50")
    plan = rounds_plan(quick, big)
    tag = {"device": device, "amp": amp, "threads": torch.get_num_threads()}

    images, targets = make_inputs(size, 2, device=device)
    steps = {k: make_train_step(m, images, targets, device, amp)
             for k, m in (("ours", ours), ("tv", tv), ("aa", aa))}
    _measure_pair(records, info, "train_step", "peak_memory_train", size, steps, (ours, tv),
                  plan, 2, sync, profile, tag)
    del steps
    gc.collect()

    one = images[:1]
    infer = {k: make_infer(m, one, device, amp) for k, m in (("ours", ours), ("tv", tv), ("aa", aa))}
    _measure_pair(records, info, "infer_b1", "peak_memory_infer_b1", size, infer, (ours, tv),
                  plan, 1, sync, profile, tag)

    if quick and big and device == "cpu":
        emit(records, {"figure": "throughput_b8", "size": size, "unit": "images/s",
                       "skipped": "--quick skips batch-8 throughput at resnet50 on CPU", **tag})
    else:
        images8, _ = make_inputs(size, 8, seed=1, device=device)
        infer8 = {k: make_infer(m, images8, device, amp)
                  for k, m in (("ours", ours), ("tv", tv), ("aa", aa))}
        t = interleaved(infer8, warmup=1, sync=sync, **plan)
        emit(records, instrument_record("throughput_b8", size, t, unit="images/s", per=8, batch=8,
                                        **tag))
    del ours, tv, aa
    gc.collect()
    return records, info


# ------------------------------------------------------------------ the whole run


def _emit_loader(records: list[dict[str, Any]], base: Config, quick: bool) -> None:
    """The data-loader figures, then the model's training images/s (from train_step) beside them."""
    workers = [0, base.train.num_workers] if base.train.num_workers else [0]
    emit(records, loader_records(64 if quick else 256, workers, base.train.batch_size))
    train = next((r for r in records if r["figure"] == "train_step" and r.get("device") == "cpu"
                  and r["size"].startswith("resnet18_c4")), None)
    if train is not None:
        emit(records, {"figure": "model_train", "size": "resnet18_c4 256 batch 2",
                       "unit": "images/s", "ours": 2 / train["ours"],
                       "torchvision": 2 / train["torchvision"], "ratio": train["ratio"],
                       "device": "cpu", "note": "training images/s from the train_step figure"})


def run_bench(quick: bool, out_dir: Path = Path("reports"), config_path: Path = Path("params.yaml"),
              overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run every figure, print one line each, write `out_dir`/benchmarks.{md,json}; the records.

    --quick (about 2 minutes on 2 CPU cores): fewer repeats (resnet50: 1 warm-up + 2 timed train
    steps, 3 inferences), no batch-8 throughput and no peak memory at resnet50 on CPU, no
    profiler, evaluation on 1000 images instead of 5000, data loader over 64 images.
    """
    t_start = time.perf_counter()
    base = (load_config(config_path, overrides) if Path(config_path).is_file()
            else config_from_dict({}, overrides))
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
    records.extend(bench_recipe(base, quick, rounds_plan(quick, big=False)))
    records.extend(bench_export(base, quick, rounds_plan(quick, big=False)))
    emit_cpu_memory(records, base, quick)
    emit(records, eval_time_records(1000 if quick else 5000))
    _emit_loader(records, base, quick)
    if not quick:  # where the time goes: per-stage, both implementations -> breakdown.{md,json,png}
        from benchmarks.breakdown import run as run_breakdown

        run_breakdown(False, Path(out_dir), base)

    meta["seconds"] = round(time.perf_counter() - t_start, 1)
    write_report(records, meta, sizes_info, Path(out_dir))
    print(f"wrote {Path(out_dir) / 'benchmarks.md'} and .json ({meta['seconds']} s)", flush=True)
    return records


# ------------------------------------------------------------------ report


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


def _header_lines(meta: dict[str, Any]) -> list[str]:
    v = meta.get("versions", {})
    return [
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
        "timed in the same round: robust when the machine's load drifts during a figure; [95 % "
        "interval] = percentile bootstrap of that median over rounds. A/A = a second, identical "
        "torchvision model timed in the same rounds, against the first: how far from 1.00 this "
        "run's noise alone moves a ratio; a paired ratio whose interval overlaps the A/A's is not "
        "a difference. images/s figures show images per second, their ratios are still ratios of "
        "times.",
        "",
        "| figure | size | device | ours | torchvision | ratio | paired ratio [95 %] | A/A [95 %] | rounds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]


def _record_row(r: dict[str, Any]) -> str:
    dev = r.get("device", "cpu") + (" amp" if r.get("amp") else "")
    if r.get("skipped"):
        return f"| {r['figure']} | {r['size']} | {dev} | skipped: {r['skipped']} | | | | | |"
    unit = r["unit"]
    peer = r.get("torchvision")
    peer_s = "—" if peer is None else format_value(peer, unit)
    if r.get("peer") and peer is not None:
        peer_s += f" ({r['peer']})"
    ratio = "—" if r.get("ratio") is None else f"{r['ratio']:.2f}"
    n = (f"{len(r['ours_samples'])} / {len(r['tv_samples'])}" if "ours_samples" in r else "1")
    paired = f"{r['ratio_paired']:.2f}" if r.get("ratio_paired") is not None else "—"
    if r.get("ci95") and not any(math.isnan(x) for x in r["ci95"]):
        paired += " [{:.2f}, {:.2f}]".format(*r["ci95"])
    aa = "—"
    if r.get("aa_ratio") is not None:
        aa = f"{r['aa_ratio']:.2f}"
        if not any(math.isnan(x) for x in r.get("aa_ci95", [math.nan])):
            aa += " [{:.2f}, {:.2f}]".format(*r["aa_ci95"])
    return (f"| {r['figure']} | {r['size']} | {dev} | {format_value(r['ours'], unit)} | {peer_s} "
            f"| {ratio} | {paired} | {aa} | {n} |")


def _profile_lines(size: str, title: str, prof: dict[str, Any]) -> list[str]:
    lines = ["", f"## Profile: {size}, {title} (one call, torch.profiler, CPU)", "",
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
    return lines


def write_report(records: list[dict[str, Any]], meta: dict[str, Any],
                 sizes: list[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """`out_dir`/benchmarks.json (everything) and benchmarks.md (tables and method notes)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "benchmarks.json"
    js.write_text(json.dumps({"meta": meta, "sizes": sizes, "records": records}, indent=1,
                             default=_json_default) + "\n")
    lines = _header_lines(meta) + [_record_row(r) for r in records]
    lines += ["", "## Parameter counts", "",
              "| size | ours | torchvision | trainable (ours / tv) |", "|---|---|---|---|"]
    for s in sizes:
        lines.append(f"| {s['size']} | {s['params_ours']:,} | {s['params_torchvision']:,} | "
                     f"{s['trainable_ours']:,} / {s['trainable_torchvision']:,} |")
    for s in sizes:
        for key, title in (("profile_train_step", "train step"), ("profile_infer_b1", "inference b1")):
            if s.get(key):
                lines += _profile_lines(s["size"], title, s[key])
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
    "so read them for ops that differ in kind or call count, not for the time of shared ops. "
    "Where the time goes stage by stage (transform, trunk, RPN head, proposals, RoI op, box "
    "head, losses, backward, optimizer), for both implementations, with each step's FLOPs "
    "against this CPU's measured peak: `breakdown.md` (`python benchmarks/breakdown.py`, also "
    "written by the full run).",
    "recipe_evaluate: `frcnn evaluate`'s inference end to end (the test split's loader, "
    "decoding included, at eval.batch_size through frcnn.engine.inference.predict with eval.amp "
    "and eval.channels_last as params.yaml has them, float32 by default) for both models, "
    "images/s over the first 16 (--quick) or 128 test images; skipped before `dvc repro`. "
    "recipe_evaluate_opt_in: the same with the opt-in eval.amp (bfloat16 autocast where the CPU "
    "has it) and eval.channels_last switched on for both.",
    "Test-time proposals: our RPN stops each image's NMS once it has kept "
    "`rpn.post_nms_top_n_test` boxes (`frcnn.ops.nms.nms_top_n`, the same proposals); "
    "torchvision runs NMS over every candidate. With random weights more candidates survive NMS "
    "than with a trained model, so this figure's share of the inference time is larger here "
    "than in `frcnn evaluate` on the committed model.",
    "Timing (`benchmarks.timing.interleaved`): rounds of ours, torchvision and its A/A copy in "
    "one process, in an order shuffled per round, after one warm-up round, until the paired "
    "ratio's bootstrap interval is within the target precision (3 % --quick, 2 % full) or the "
    "figure's time budget is spent (`rounds_plan`); medians. Train step = forward + sum of losses + backward + SGD(momentum 0.9, wd 1e-4) step "
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

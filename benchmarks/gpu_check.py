"""The prepared GPU check: one run on a CUDA machine that answers what a CPU cannot.

    python benchmarks/gpu_check.py [--out reports] [--steps 300]        # on the GPU machine
    python benchmarks/gpu_check.py --dry-run [--out DIR]                 # the same code on a CPU
    python benchmarks/gpu_check.py ... [--params params.yaml] [--presets presets.yaml]
                                       [--parts precision,resume,...]

Meant for a bare machine: torch + torchvision, no install of this package (the repository root
goes on sys.path), no dvc, mlflow, pycocotools, albumentations or defusedxml, no internet. The data
is the embedded synthetic set rendered into a temporary folder as JPEGs + a COCO JSON (the
project's `render_image`, not the download/preprocess stages, which need defusedxml); the models
start from random weights (`model.pretrained: false`). On one H200 it should take 3-4 minutes at
the default `--steps 300` (an estimate from FLOPs, not yet measured: each part prints its
seconds, and `--steps` / `--parts` cut a rerun down).

Parts (each runs on its own: a failing one is recorded and the others still run):

1. precision: R50-C4 (roi.output_size 14, 600 px short side, batch 2) trained `--steps` steps from
   the same seed in float32, float16 autocast + GradScaler and bfloat16: the loss curves agree
   (last `window` steps, tolerances in `TOL`), the float16 loss scale settles, nothing stops.
2. resume: the float16 run stopped by SIGTERM at steps/2 (the trainer checkpoints and raises
   TrainingInterrupted), resumed to `--steps`: the same step, the same losses within `TOL`
   (bit-identical required on a CPU, where the trainer is deterministic).
3. distributed: `python -m torch.distributed.run --standalone --nproc_per_node=<GPUs>` of this
   script's `--dist-worker`: NCCL (gloo on a CPU) all-reduce, 50 steps of train() under the
   process group, the ranks' weights equal at the end.
4. eval_devices: the float32 checkpoint of part 1 evaluated on CUDA and on the CPU: detections
   matched one to one within `TOL`, the same VOC AP (and COCO AP when pycocotools is there).
5. speed: ours vs torchvision's Faster R-CNN (`benchmarks.peer`, `benchmarks.timing`): train step
   at batch 2, inference at batch 1 and 8, fp32 and AMP, peak CUDA memory; ratio with its spread.
6. projection: every preset of presets.yaml timed for a few steps at its own settings (batch,
   sizes, RoIs; random weights), projected to its full schedule plus an evaluation of the test
   set, beside the preset's stated `expected_gpu_time`.

`--dry-run` runs every part on the CPU at toy sizes (resnet18_c4 at 64 px, a few steps, gloo with
2 processes, CPU vs CPU evaluation, no memory figures): the numbers mean nothing, the machinery
is what `tests/benchmarks/test_gpu_check.py` checks. Its report goes to `--out` or, without one,
to a new temporary folder (printed), never over the committed `reports/gpu_check.*`.

Writes `<out>/gpu_check.json` (strict JSON) and `<out>/gpu_check.md` after every part, atomically.
Exit status: 0 when every part passed or was skipped, 1 when one failed, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import importlib.util
import itertools
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

if TYPE_CHECKING:
    from frcnn.config import Config

if not __package__:  # run as `python benchmarks/gpu_check.py`: the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# frcnn and benchmarks are imported inside the functions that use them: only what a part needs,
# so a module that fails to import here (an optional package, an older torch) fails that part only

REPO_ROOT = Path(__file__).resolve().parents[1]
PARTS = ("precision", "resume", "distributed", "eval_devices", "speed", "projection")
OPTIONAL_PACKAGES = ("dvc", "mlflow", "pycocotools", "albumentations", "defusedxml")

# The tolerances, all stated in the report. Relative ones are fractions of float32's mean loss
# over the compared window (the last `window` steps).
TOL: dict[str, float] = {
    # the windowed means of a precision's curve and float32's: |mean_p - mean_32| / mean_32
    "curve_level_rel": 0.10,
    # step by step over the window: mean |loss_p - loss_32| / mean_32 (the RPN/RoI samplers draw
    # other anchors and RoIs once the runs differ, so single steps scatter more than the level)
    "curve_step_rel": 0.25,
    # float16 loss scaling: at most this fraction of updates skipped, at most `fp16_late_skips`
    # of them in the last quarter of the run (the scale has settled), final scale >= this
    "fp16_skipped_frac": 0.10,
    "fp16_late_skips": 1,
    "fp16_min_scale": 1.0,
    # resume on CUDA (cuDNN autotuning and atomics make GPU runs non-bit-reproducible): the
    # resumed half against the uninterrupted run, as the curves above; on a CPU: bit-identical
    "resume_level_rel": 0.10,
    "resume_step_rel": 0.25,
    # evaluation CUDA vs CPU: detections of the same label with IoU >= match_iou pair up; of
    # the larger set at least match_rate pair; paired boxes within box_px (max over the four
    # coordinates), scores within score; VOC07/VOC10 mAP (and COCO mAP) within ap, i.e. equal
    # to 3 decimals
    "eval_match_iou": 0.9,
    "eval_match_rate": 0.9,
    "eval_box_px": 1.0,
    "eval_score": 0.01,
    "eval_ap": 5e-4,
}

# VOC2007 test, which both VOC presets evaluate on (4952 images)
TEST_IMAGES = {"voc2007": 4952, "voc0712": 4952}
VOC_NUM_CLASSES = 20

# ---------------------------------------------------------------------------- the plan


R50_C4 = {  # part 1's model: detectron2's C4 layout, random weights, 600/1000 px, batch 2
    "model.backbone": "resnet50_c4", "roi.output_size": 14, "model.pretrained": False,
    "model.frozen_bn": None, "model.min_size": 600, "model.max_size": 1000,
    "model.min_size_train": [], "anchors.unit": "px", "anchors.scales": [32, 64, 128, 256, 512],
    "train.batch_size": 2,
}

TOY = {  # the dry run's model, for parts 1-3 and the preset timings: seconds on 2 CPU cores
    "model.backbone": "resnet18_c4", "model.pretrained": False, "model.min_size": 64,
    "model.max_size": 80, "model.min_size_train": [], "anchors.unit": "px",
    "anchors.scales": [16, 32, 64], "rpn.hidden_channels": 32, "rpn.pre_nms_top_n_train": 200,
    "rpn.post_nms_top_n_train": 50, "rpn.pre_nms_top_n_test": 100, "rpn.post_nms_top_n_test": 20,
    "roi.output_size": 7, "roi.hidden_dim": 32, "roi.batch_size_per_image": 8,
    "train.batch_size": 2, "train.warmup_steps": 2,
}

TOY_SPEED_SIZE = "resnet18_c4 64 (dry run)"
TOY_SPEED_SPEC = {"overrides": {"model.backbone": "resnet18_c4", "model.min_size": 64,
                                "model.max_size": 80, "rpn.pre_nms_top_n_train": 200,
                                "rpn.post_nms_top_n_train": 50, "rpn.pre_nms_top_n_test": 100,
                                "rpn.post_nms_top_n_test": 20, "roi.batch_size_per_image": 16,
                                "roi.hidden_dim": 32},
                  "image": (64, 80), "gt_per_image": 2, "num_classes": 6}


@dataclass(frozen=True)
class Plan:
    """The sizes of one run: the GPU's (`gpu_plan`) or the dry run's (`dry_plan`)."""

    dry_run: bool
    device: str                     # "cuda" | "cpu"
    steps: int                      # part 1's training steps per precision
    window: int                     # the last steps whose losses are compared
    image_hw: tuple[int, int]       # the synthetic images' (H, W)
    n_train: int
    n_test: int
    model: dict[str, Any]           # part 1-3's config overrides
    dist_procs: int
    dist_steps: int
    speed_size: str                 # a `benchmarks.peer.SIZES` key
    speed_amp: tuple[bool, ...]
    speed_reps: dict[str, int]      # timed rounds per figure (after `speed_warmup`)
    speed_warmup: int
    preset_warmup: int              # untimed steps before the timed ones (at least)
    preset_steps: int
    preset_toy: dict[str, Any] = field(default_factory=dict)  # dry run: toy sizes on top


def gpu_plan(steps: int) -> Plan:
    return Plan(dry_run=False, device="cuda", steps=steps, window=min(50, max(steps // 2, 1)),
                image_hw=(375, 500), n_train=64, n_test=8, model=R50_C4,
                dist_procs=max(torch.cuda.device_count(), 1), dist_steps=50,
                speed_size="resnet50 600", speed_amp=(False, True),
                speed_reps={"train_step": 10, "infer_b1": 20, "throughput_b8": 5}, speed_warmup=2,
                preset_warmup=6, preset_steps=20)


def dry_plan(steps: int) -> Plan:
    return Plan(dry_run=True, device="cpu", steps=steps, window=max(steps // 2, 1),
                image_hw=(64, 80), n_train=8, n_test=4, model=TOY, dist_procs=2, dist_steps=2,
                speed_size=TOY_SPEED_SIZE, speed_amp=(False,),
                speed_reps={"train_step": 2, "infer_b1": 2, "throughput_b8": 1}, speed_warmup=1,
                preset_warmup=1, preset_steps=2, preset_toy=TOY)


@dataclass
class Context:
    """What the parts share: the plan, the data, the params, results handed on (checkpoints)."""

    plan: Plan
    work: Path                      # temporary: data, checkpoints
    params: dict[str, Any]          # params.yaml's content
    presets_path: Path
    train_json: Path
    test_json: Path
    state: dict[str, Any] = field(default_factory=dict)

    def config(self, overrides: dict[str, Any]) -> Config:
        """params.yaml + the plan's model + `overrides` + what every check run sets."""
        from frcnn.config import config_from_dict

        return config_from_dict(self.params, {
            **self.plan.model, "train.device": self.plan.device, "train.num_workers": 0,
            "train.log_every": 1, "train.max_steps": self.plan.steps,
            "train.checkpoint_every": 10 ** 9, **overrides})


class Skipped(Exception):
    """A part (or run) that cannot run here: recorded as skipped with this reason."""


# ---------------------------------------------------------------------------- data


def write_synthetic_split(root: Path, split: str, n: int, hw: tuple[int, int], seed: int = 0
                          ) -> Path:
    """`n` synthetic images (H, W) = `hw` as JPEGs under `root/split/` and their COCO JSON
    `root/<split>.json` in the layout the preprocess stage writes (0-based [x, y, w, h] boxes,
    difficult objects with iscrowd 1, category ids 1..6).

    Each image is `frcnn.data.synth.render_image` at max(H, W) cut to H rows; a box the cut
    leaves less than half of its height is dropped.
    """
    from PIL import Image

    from frcnn.config import SynthConfig
    from frcnn.data.synth import CLASSES, image_rng, render_image

    h, w = hw
    size = max(h, w)
    synth = SynthConfig(min_object_size=min(32.0, size / 4), max_object_size=0.6 * size)
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        pixels, objects = render_image(image_rng(seed, split, i), size, synth)
        name = f"{i:05d}.jpg"
        Image.fromarray(pixels[:h, :w].copy()).save(folder / name, quality=90)
        images.append({"id": i + 1, "file_name": f"{split}/{name}", "width": w, "height": h})
        for o in objects:
            xmin, ymin, xmax, ymax = o.bndbox  # VOC: 1-based inclusive
            x0, y0, x1, y1 = xmin - 1, ymin - 1, min(xmax, w), min(ymax, h)
            if x1 - x0 < 4 or y1 - y0 < 0.5 * (ymax - ymin + 1):
                continue
            anns.append({"id": len(anns) + 1, "image_id": i + 1,
                         "category_id": CLASSES.index(o.name) + 1,
                         "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                         "area": float((x1 - x0) * (y1 - y0)), "iscrowd": int(o.difficult),
                         "difficult": int(o.difficult), "truncated": int(o.truncated)})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": k + 1, "name": c} for k, c in enumerate(CLASSES)]}
    path = root / f"{split}.json"
    path.write_text(json.dumps(coco))
    return path


class InMemory(torch.utils.data.Dataset):
    """A `DetectionDataset`'s items decoded once: the GPU steps are timed, not JPEG decoding."""

    def __init__(self, json_path: Path) -> None:
        from frcnn.data.dataset import DetectionDataset

        ds = DetectionDataset(json_path, train=True)
        self.class_names = list(ds.class_names)
        self.num_classes = ds.num_classes
        self.items = [ds[i] for i in range(len(ds))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


# ---------------------------------------------------------------------------- training runs


@contextlib.contextmanager
def watch_updates() -> Iterator[list[int]]:
    """While open, the list receives the (1-based) step of every update the trainer skipped
    (float16 loss scaling on a non-finite loss or gradient): `train()` looks `train_step` up in
    its module, so wrapping it there sees every step without changing what it does."""
    from frcnn.engine import trainer

    original = trainer.train_step
    skipped: list[int] = []

    def counted(*args: Any, **kwargs: Any):
        out = original(*args, **kwargs)
        if not out[2]:
            skipped.append(int(kwargs["step"]) + 1)
        return out

    trainer.train_step = counted
    try:
        yield skipped
    finally:
        trainer.train_step = original


def train_run(cfg: Config, dataset: InMemory, checkpoint: Path, *, resume: bool = False,
              stop_at: int | None = None, calibrate: bool = False,
              num_classes: int | None = None, untimed: int | None = None) -> dict[str, Any]:
    """One `frcnn.engine.trainer.train` run from `cfg.seed`; its summary.

    `stop_at`: SIGTERM to this process after that step (the trainer checkpoints and raises
    TrainingInterrupted, caught here: `interrupted` holds the message). `calibrate`: BatchNorm
    statistics from one batch first (frozen BatchNorm without ImageNet weights does not normalise).
    Returns steps, per-step losses (history), s/step (median over the steps after the first
    `untimed`, default a tenth of the run; each step timed between two logged rows, so the first
    step never counts), skipped updates, the final loss scale (from the checkpoint), warnings.
    """
    from frcnn.data.dataset import collate_fn
    from frcnn.engine.checkpoint import load_checkpoint
    from frcnn.engine.device import seed_everything
    from frcnn.engine.trainer import TrainingInterrupted, train
    from frcnn.model.build import build_model

    seed_everything(cfg.seed)
    model = build_model(cfg, num_classes=num_classes or dataset.num_classes)
    if calibrate:
        from benchmarks.peer import calibrate_batchnorm

        calibrate_batchnorm(model, [dataset[i][0] for i in range(min(2, len(dataset)))])
    stamps: list[float] = []

    def on_log(step: int, row: dict[str, float]) -> None:
        stamps.append(time.perf_counter())
        if stop_at is not None and step == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)

    extra = {"num_classes": num_classes or dataset.num_classes,
             "class_names": dataset.class_names}
    interrupted = None
    # a SIGTERM this process ignores (nohup) would not stop the run: let the trainer catch it
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL) if stop_at is not None else None
    try:
        with watch_updates() as skipped:
            result = train(model, dataset, collate_fn, cfg, checkpoint, resume=resume,
                           extra_state=extra, on_log=on_log, progress=False)
        step, history, warnings = result.step, result.history, result.warnings
    except TrainingInterrupted as exc:
        interrupted = str(exc)
        state = load_checkpoint(checkpoint)
        step, history, warnings = int(state["step"]), list(state.get("history", [])), []
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    scaler = load_checkpoint(checkpoint).get("scaler") or {}
    dts = [b - a for a, b in itertools.pairwise(stamps)]  # dts[i]: step i + 2 (1-based)
    timed = dts[max((len(stamps) // 10 if untimed is None else untimed) - 1, 0):]
    out = {"steps": step, "losses": [round(float(r["loss"]), 6) for r in history],
           "s_per_step": statistics.median(timed) if timed else None,
           "s_per_step_mean": statistics.fmean(timed) if timed else None,
           "images_per_step": cfg.train.batch_size, "skipped_updates": skipped,
           "final_scale": float(scaler["scale"]) if "scale" in scaler else None,
           "warnings": warnings, "interrupted": interrupted}
    del model
    free_memory()
    return out


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def compare_curves(ref: list[float], other: list[float], window: int) -> dict[str, Any]:
    """The last `window` common steps of two loss curves: the relative difference of their
    means (`level_rel`) and the mean step-by-step |difference| relative to ref's mean
    (`step_rel`), plus the largest step difference."""
    n = min(len(ref), len(other))
    a, b = ref[max(n - window, 0):n], other[max(n - window, 0):n]
    if not a:
        raise ValueError("no common steps to compare")
    ref_mean, mean = statistics.fmean(a), statistics.fmean(b)
    diffs = [abs(x - y) for x, y in zip(a, b)]
    return {"window": len(a), "ref_mean": ref_mean, "mean": mean,
            "level_rel": abs(mean - ref_mean) / ref_mean, "step_rel": statistics.fmean(diffs) / ref_mean,
            "max_abs": max(diffs)}


def curve_checks(label: str, cmp: dict[str, Any], tol: str) -> list[tuple[str, bool]]:
    """The two curve checks of `compare_curves`' output against TOL[<tol>_level_rel/_step_rel]."""
    out = []
    for kind in ("level", "step"):
        value, limit = cmp[f"{kind}_rel"], TOL[f"{tol}_{kind}_rel"]
        out.append((f"{label}: {kind} {value:.3f} <= {limit:g}", value <= limit))
    return out


def verdict(result: dict[str, Any], checks: list[tuple[str, bool]]) -> dict[str, Any]:
    """`result` with its checks, status passed or failed (`error`: the failed checks)."""
    result["checks"] = [{"check": name, "ok": bool(ok)} for name, ok in checks]
    failed = [name for name, ok in checks if not ok]
    result["status"] = "failed" if failed else "passed"
    if failed:
        result["error"] = "; ".join(failed)
    return result


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]


# ---------------------------------------------------------------------------- 1. precision


PRECISIONS = {  # name -> train.* overrides
    "float32": {"train.amp": False},
    "float16": {"train.amp": True, "train.amp_dtype": "float16"},
    "bfloat16": {"train.amp": True, "train.amp_dtype": "bfloat16"},
}


def fp16_checks(run: dict[str, Any], steps: int) -> list[tuple[str, bool]]:
    skipped = run["skipped_updates"]
    late = [s for s in skipped if s > 0.75 * steps]
    scale = run["final_scale"]
    return [
        (f"float16: {len(skipped)} skipped updates <= {TOL['fp16_skipped_frac']:.0%} of {steps}",
         len(skipped) <= TOL["fp16_skipped_frac"] * steps),
        (f"float16: {len(late)} skipped in the last quarter <= {TOL['fp16_late_skips']:g}",
         len(late) <= TOL["fp16_late_skips"]),
        (f"float16: final loss scale {scale} >= {TOL['fp16_min_scale']:g}",
         scale is not None and math.isfinite(scale) and scale >= TOL["fp16_min_scale"]),
    ]


def part_precision(ctx: Context) -> dict[str, Any]:
    """Train float32, float16 (+ GradScaler) and bfloat16 from one seed; compare the curves."""
    plan = ctx.plan
    dataset = ctx.state["dataset"]
    runs: dict[str, dict[str, Any]] = {}
    for name, over in PRECISIONS.items():
        if name == "float16" and plan.device != "cuda":
            runs[name] = {"status": "skipped", "reason": "float16 autocast with loss scaling "
                          "needs CUDA (train.amp_dtype float16 is refused on a CPU)"}
            continue
        try:
            ckpt = ctx.work / f"precision-{name}.pt"
            runs[name] = {"status": "ran", **train_run(ctx.config(over), dataset, ckpt)}
            ctx.state[f"checkpoint_{name}"] = ckpt
        except Exception as exc:  # noqa: BLE001 - one precision failing must not hide the others
            traceback.print_exc()
            runs[name] = {"status": "failed", "error": one_line(exc)}
    result: dict[str, Any] = {"steps": plan.steps, "window": plan.window, "runs": runs,
                              "comparisons": {}}
    ctx.state["precision_runs"] = runs
    checks = []
    for name, run in runs.items():
        if run["status"] == "skipped":
            continue
        checks.append((f"{name}: ran without stopping", run["status"] == "ran"))
        if run["status"] != "ran":
            continue
        checks.append((f"{name}: {run['steps']} steps == {plan.steps}", run["steps"] == plan.steps))
        checks.append((f"{name}: every loss finite", all(map(math.isfinite, run["losses"]))))
        if name == "float16":
            checks += fp16_checks(run, plan.steps)
    ref = runs.get("float32", {})
    for name, run in runs.items():
        if name == "float32" or run["status"] != "ran" or ref.get("status") != "ran":
            continue
        cmp = compare_curves(ref["losses"], run["losses"], plan.window)
        result["comparisons"][name] = cmp
        checks += curve_checks(f"{name} vs float32", cmp, "curve")
    for r in result["runs"].values():  # the status of a run that ran: its checks decide
        if r["status"] == "ran":
            r["status"] = "passed"
    return verdict(result, checks)


# ---------------------------------------------------------------------------- 2. resume


def part_resume(ctx: Context) -> dict[str, Any]:
    """Stop a run by SIGTERM at steps/2, resume it to `steps`, compare with the uninterrupted run
    of part 1 in the same precision (float16 on CUDA, float32 on a CPU)."""
    plan = ctx.plan
    precision = "float16" if plan.device == "cuda" else "float32"
    reference = ctx.state.get("precision_runs", {}).get(precision, {})
    if reference.get("status") not in ("passed", "ran"):
        raise RuntimeError(f"needs part 1's uninterrupted {precision} run "
                           f"(status {reference.get('status', 'not run')})")
    cfg = ctx.config(PRECISIONS[precision])
    ckpt = ctx.work / f"resume-{precision}.pt"
    half = max(plan.steps // 2, 1)
    first = train_run(cfg, ctx.state["dataset"], ckpt, stop_at=half)
    resumed = train_run(cfg, ctx.state["dataset"], ckpt, resume=True)
    ref, got = reference["losses"], resumed["losses"]
    after = slice(half, None)  # the steps trained after the resume
    result = {"precision": precision, "stopped_at": first["steps"],
              "interrupted": first["interrupted"], "steps": resumed["steps"],
              "reference_steps": reference["steps"], "losses_after_resume": got[after],
              "reference_losses_after_resume": ref[after],
              "bit_identical": got == ref, "final_scale": resumed["final_scale"],
              "reference_final_scale": reference.get("final_scale")}
    checks = [(f"stopped by SIGTERM at step {first['steps']} == {half}",
               first["interrupted"] is not None and first["steps"] == half),
              (f"resumed to step {resumed['steps']} == {reference['steps']}",
               resumed["steps"] == reference["steps"] == plan.steps),
              ("the history survives: one loss per step", len(got) == len(ref))]
    if plan.device == "cuda":
        cmp = compare_curves(ref[after], got[after], plan.window)
        result["comparison"] = cmp
        checks += curve_checks("resumed vs uninterrupted", cmp, "resume")
    else:
        checks.append(("CPU: losses bit-identical to the uninterrupted run", got == ref))
    return verdict(result, checks)


# ---------------------------------------------------------------------------- 3. distributed


def part_distributed(ctx: Context) -> dict[str, Any]:
    """torchrun this script's `--dist-worker` on `dist_procs` processes; check what rank 0 wrote."""
    plan = ctx.plan
    if not torch.distributed.is_available():
        raise Skipped("this torch is built without torch.distributed")
    cfg = ctx.config({"train.max_steps": plan.dist_steps, **PRECISIONS["float32"]})
    spec = {"config": cfg.to_dict(), "train_json": str(ctx.train_json),
            "checkpoint": str(ctx.work / "dist.pt"), "result": str(ctx.work / "dist.json")}
    spec_path = ctx.work / "dist-spec.json"
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={plan.dist_procs}", str(Path(__file__).resolve()),
           "--dist-worker", str(spec_path)]
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    if plan.device == "cpu":
        env["OMP_NUM_THREADS"] = "1"  # the processes share the cores
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True,
                          timeout=180 if plan.device == "cuda" else 150)
    result: dict[str, Any] = {"command": " ".join(cmd[1:5]) + " ... --dist-worker",
                              "returncode": proc.returncode,
                              "wall_s": round(time.perf_counter() - t0, 1)}
    if proc.returncode != 0 or not Path(spec["result"]).exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        result["stderr_tail"] = tail
        raise RuntimeError(f"torchrun exited {proc.returncode}: "
                           f"{tail[-1] if tail else '(no output)'}")
    worker = json.loads(Path(spec["result"]).read_text())
    result.update(worker)
    expected_backend = "nccl" if plan.device == "cuda" else "gloo"
    checks = [(f"world size {worker['world_size']} == {plan.dist_procs}",
               worker["world_size"] == plan.dist_procs),
              (f"backend {worker['backend']} == {expected_backend}",
               worker["backend"] == expected_backend),
              (f"all_reduce of ones == world size ({worker['all_reduce']})",
               worker["all_reduce"] == plan.dist_procs),
              (f"{worker['steps']} steps == {plan.dist_steps}", worker["steps"] == plan.dist_steps),
              ("every loss finite", all(map(math.isfinite, worker["losses"]))),
              (f"ranks' weights equal (spread {worker['weights_spread']:.3g})",
               worker["weights_spread"] <= 1e-6 * max(abs(worker["weights_sum"]), 1.0))]
    if worker["world_size"] == 1:
        result["note"] = ("one process: train() does not wrap the model in DDP at world size 1; "
                          "the process group, its all-reduce and the loop under torchrun ran")
    return verdict(result, checks)


def dist_worker(spec_path: Path) -> None:
    """One torchrun process: join the group, all-reduce, train, compare weights; rank 0 writes."""
    import torch.distributed as dist

    from frcnn.config import config_from_dict
    from frcnn.data.dataset import collate_fn
    from frcnn.engine.device import seed_everything
    from frcnn.engine.distributed import init_distributed
    from frcnn.engine.trainer import train
    from frcnn.fileio import atomic_write_json
    from frcnn.model.build import build_model

    spec = json.loads(Path(spec_path).read_text())
    cfg = config_from_dict(spec["config"])
    info = init_distributed(cfg.train.device)
    use_cuda = cfg.train.device == "cuda"
    if not dist.is_initialized():  # world size 1: init_distributed leaves the group alone
        dist.init_process_group("nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
    device = torch.device("cuda", info.local_rank) if use_cuda else torch.device("cpu")
    ones = torch.ones(1, device=device)
    dist.all_reduce(ones)
    dataset = InMemory(Path(spec["train_json"]))
    seed_everything(cfg.seed)
    model = build_model(cfg, num_classes=dataset.num_classes)
    result = train(model, dataset, collate_fn, cfg, Path(spec["checkpoint"]), dist_info=info,
                   progress=False, extra_state={"num_classes": dataset.num_classes,
                                                "class_names": dataset.class_names})
    total = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    sums = [torch.zeros_like(total) for _ in range(dist.get_world_size())]
    dist.all_gather(sums, total)
    values = [float(s) for s in sums]
    if info.is_main:
        atomic_write_json(Path(spec["result"]), {
            "world_size": dist.get_world_size(), "backend": str(dist.get_backend()),
            "all_reduce": float(ones.item()), "steps": result.step,
            "losses": [round(float(r["loss"]), 6) for r in result.history],
            "train_seconds": round(result.seconds, 2),
            "images_per_s": round(result.images_per_s, 2),
            "weights_sum": values[0], "weights_spread": max(values) - min(values)})
    dist.barrier()
    dist.destroy_process_group()


# ---------------------------------------------------------------------------- 4. eval devices


def detections_on(checkpoint: Path, test_json: Path, device: str, batch_size: int
                  ) -> tuple[dict[int, dict[str, torch.Tensor]], float]:
    """{image_id: detections (boxes (D, 4), labels (D,), scores (D,)) on CPU} of the checkpoint's
    detector (loaded afresh) on `device`, and the seconds it took."""
    from frcnn.data.dataset import DetectionDataset, collate_fn
    from frcnn.engine.inference import load_detector, predict

    dataset = DetectionDataset(test_json, train=False, include_difficult=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn)
    model, _ = load_detector(checkpoint, device=device)
    t0 = time.perf_counter()
    out = {int(target["image_id"]): det
           for _, target, det in predict(model, loader, torch.device(device), progress=False)}
    seconds = time.perf_counter() - t0
    del model
    free_memory()
    return out, seconds


def match_detections(a: dict[int, dict[str, torch.Tensor]], b: dict[int, dict[str, torch.Tensor]],
                     iou: float) -> dict[str, Any]:
    """Pair a's detections with b's, per image, greedily in a's score order: the unpaired b
    detection of the same label with the highest IoU, if >= `iou`. The paired boxes' largest
    coordinate difference (px) and score difference."""
    from torchvision.ops import box_iou

    pairs, n_a, n_b, box_d, score_d = 0, 0, 0, [], []
    for image_id in sorted(set(a) | set(b)):
        da, db = a.get(image_id), b.get(image_id)
        na, nb = (len(da["scores"]) if da else 0), (len(db["scores"]) if db else 0)
        n_a, n_b = n_a + na, n_b + nb
        if not na or not nb:
            continue
        ious = box_iou(da["boxes"].double(), db["boxes"].double())
        ious[da["labels"][:, None] != db["labels"][None, :]] = -1.0
        for i in torch.argsort(da["scores"], descending=True).tolist():
            j = int(torch.argmax(ious[i]))
            if ious[i, j] < iou:
                continue
            ious[:, j] = -1.0  # b's detection j is taken
            pairs += 1
            box_d.append(float((da["boxes"][i] - db["boxes"][j]).abs().max()))
            score_d.append(abs(float(da["scores"][i] - db["scores"][j])))
    return {"detections_a": n_a, "detections_b": n_b, "paired": pairs,
            "match_rate": pairs / max(n_a, n_b) if max(n_a, n_b) else 1.0,
            "max_box_diff_px": max(box_d, default=0.0),
            "median_box_diff_px": statistics.median(box_d) if box_d else 0.0,
            "max_score_diff": max(score_d, default=0.0)}


def average_precision(gt: dict[str, Any], dets: dict[int, dict[str, torch.Tensor]]
                      ) -> dict[str, Any]:
    """VOC07 11-point and VOC10 all-point mAP (frcnn's devkit-rules evaluator, always), COCO mAP
    and AP50 by pycocotools when it is installed (else `coco_skipped`)."""
    from frcnn.engine.inference import to_coco_results
    from frcnn.evaluation.voc import voc_metrics

    results = [r for image_id, det in sorted(dets.items()) for r in to_coco_results(image_id, det)]
    voc = voc_metrics(gt, results)
    out: dict[str, Any] = {"voc07_map": voc["voc07_map"], "voc10_map": voc["voc10_map"]}
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        out["coco_skipped"] = "pycocotools is not installed: VOC AP (frcnn.evaluation.voc) only"
        return out
    from frcnn.evaluation.coco import coco_metrics

    coco = coco_metrics(gt, results)
    out.update({"coco_map": coco["map"], "coco_ap50": coco["ap50"]})
    return out


def part_eval_devices(ctx: Context) -> dict[str, Any]:
    """Part 1's float32 checkpoint evaluated on CUDA and on the CPU (dry run: the CPU twice)."""
    plan = ctx.plan
    ckpt = ctx.state.get("checkpoint_float32")
    source = "part 1's float32 run"
    if ckpt is None or not Path(ckpt).exists():  # part 1 failed: an untrained model still compares
        ckpt, source = untrained_checkpoint(ctx), "untrained (part 1 left no float32 checkpoint)"
    batch = ctx.config({}).eval.batch_size
    first = "cuda" if plan.device == "cuda" else "cpu"
    dets_a, secs_a = detections_on(ckpt, ctx.test_json, first, batch)
    dets_b, secs_b = detections_on(ckpt, ctx.test_json, "cpu", batch)
    gt = json.loads(ctx.test_json.read_text())
    ap_a, ap_b = average_precision(gt, dets_a), average_precision(gt, dets_b)
    match = match_detections(dets_a, dets_b, TOL["eval_match_iou"])
    result: dict[str, Any] = {
        "checkpoint": source, "images": len(gt["images"]),
        "sides": [first, "cpu"] if plan.device == "cuda" else ["cpu (first run)", "cpu (second run)"],
        "seconds": [round(secs_a, 2), round(secs_b, 2)], "match": match,
        "ap": {"a": ap_a, "b": ap_b}}
    if plan.device != "cuda":
        result["note"] = "dry run: no CUDA, the comparison machinery ran CPU against CPU"
    checks = [(f"match rate {match['match_rate']:.3f} >= {TOL['eval_match_rate']:g}",
               match["match_rate"] >= TOL["eval_match_rate"]),
              (f"paired boxes within {match['max_box_diff_px']:.3g} <= {TOL['eval_box_px']:g} px",
               match["max_box_diff_px"] <= TOL["eval_box_px"]),
              (f"paired scores within {match['max_score_diff']:.3g} <= {TOL['eval_score']:g}",
               match["max_score_diff"] <= TOL["eval_score"])]
    for key in ("voc07_map", "voc10_map", "coco_map"):
        if key in ap_a and key in ap_b:
            a, b = ap_a[key], ap_b[key]
            same = (math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOL["eval_ap"]
            checks.append((f"{key} {a:.4f} vs {b:.4f} within {TOL['eval_ap']:g}", same))
    return verdict(result, checks)


def untrained_checkpoint(ctx: Context) -> Path:
    from frcnn.engine.checkpoint import save_checkpoint
    from frcnn.engine.device import seed_everything
    from frcnn.model.build import build_model

    cfg = ctx.config(PRECISIONS["float32"])
    dataset = ctx.state["dataset"]
    seed_everything(cfg.seed)
    model = build_model(cfg, num_classes=dataset.num_classes)
    path = ctx.work / "untrained.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": cfg.to_dict(), "step": 0,
                           "num_classes": dataset.num_classes, "class_names": dataset.class_names})
    return path


# ---------------------------------------------------------------------------- 5. speed


def spread(ours: list[float], tv: list[float]) -> dict[str, float]:
    """Quartiles and range of the per-round ratios ours_i / tv_i."""
    r = sorted(o / t for o, t in zip(ours, tv) if t > 0)
    if not r:
        return {}
    q = statistics.quantiles(r, n=4, method="inclusive") if len(r) > 1 else [r[0]] * 3
    return {"ratio_min": r[0], "ratio_p25": q[0], "ratio_p75": q[2], "ratio_max": r[-1]}


def part_speed(ctx: Context) -> dict[str, Any]:
    """Ours vs torchvision: train step (batch 2), inference batch 1 and 8, fp32 and AMP; peak
    CUDA memory of each. Ratios ours / torchvision of medians, with the per-round spread."""
    from benchmarks.memory import measure_memory_cuda
    from benchmarks.peer import SIZES, build_pair, make_inputs
    from benchmarks.timing import alternate, make_infer, make_train_step, ratio_record
    from frcnn.config import config_from_dict

    plan = ctx.plan
    if plan.dry_run:  # a toy size beside the real ones, in this process only
        SIZES.setdefault(TOY_SPEED_SIZE, TOY_SPEED_SPEC)
    base = config_from_dict(ctx.params)
    device = plan.device
    ours, tv, _ = build_pair(plan.speed_size, base)
    ours.to(device)
    tv.to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    images, targets = make_inputs(plan.speed_size, 2, device=device)
    images8, _ = make_inputs(plan.speed_size, 8, seed=1, device=device)
    records = []
    for amp in plan.speed_amp:
        figures = {
            "train_step": (2, {"ours": make_train_step(ours, images, targets, device, amp),
                               "tv": make_train_step(tv, images, targets, device, amp)}),
            "infer_b1": (1, {"ours": make_infer(ours, images[:1], device, amp),
                             "tv": make_infer(tv, images[:1], device, amp)}),
            "throughput_b8": (8, {"ours": make_infer(ours, images8, device, amp),
                                  "tv": make_infer(tv, images8, device, amp)}),
        }
        for figure, (batch, fns) in figures.items():
            t = alternate(fns, warmup=plan.speed_warmup, repeats=plan.speed_reps[figure], sync=sync)
            unit = "images/s" if figure == "throughput_b8" else "s"
            rec = ratio_record(figure, plan.speed_size, t["ours"], t["tv"], unit=unit,
                               per=batch if unit == "images/s" else 1, batch=batch,
                               device=device, amp=amp, warmup=plan.speed_warmup)
            rec.update(spread(t["ours"], t["tv"]))
            if device == "cuda":
                mem = {k: measure_memory_cuda(m, fns[k]) for k, m in (("ours", ours), ("tv", tv))}
                rec["peak_memory_mib"] = {"ours": mem["ours"], "torchvision": mem["tv"],
                                          "ratio": mem["ours"] / mem["tv"] if mem["tv"] else None}
            else:
                rec["peak_memory_mib"] = {"skipped": "torch.cuda.max_memory_allocated needs CUDA"}
            records.append(rec)
            print(f"speed {figure}{' amp' if amp else ''}: ratio {rec['ratio']:.2f} "
                  f"(ours / torchvision)", flush=True)
        free_memory()
    del ours, tv
    free_memory()
    result = {"size": plan.speed_size, "records": records}
    checks = [(f"{r['figure']}{' amp' if r['amp'] else ''}: ratio measured",
               math.isfinite(r["ratio"]) and r["ratio"] > 0) for r in records]
    return verdict(result, checks)


# ---------------------------------------------------------------------------- 6. projection


def schedule_steps(cfg: Config, images_per_epoch: int) -> int:
    """The training steps of a preset on one GPU: train.max_steps, or epochs x steps per epoch
    (the trainer's `_budget`; the training set is the originals plus `augment.copies` copies)."""
    from frcnn.engine.distributed import steps_per_epoch

    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    n = images_per_epoch * (1 + cfg.augment.copies)
    return cfg.train.epochs * steps_per_epoch(n, cfg.train.batch_size, 1)


def timing_config(cfg: Config, plan: Plan) -> Config:
    """`cfg` (a preset's) for a few timed steps here: random weights with the preset's BatchNorm
    and stem (frozen when it would load ImageNet weights), the loop's knobs; the dry run's toy
    sizes on top."""
    from frcnn.config import config_from_dict
    from frcnn.model.build import frozen_bn

    return config_from_dict(cfg.to_dict(), {
        "model.pretrained": False, "model.frozen_bn": frozen_bn(cfg), "train.device": plan.device,
        "train.num_workers": 0, "train.log_every": 1, "train.checkpoint_every": 10 ** 9,
        **plan.preset_toy,
        "train.max_steps": warmup_steps(cfg, plan) + plan.preset_steps})


def warmup_steps(cfg: Config, plan: Plan) -> int:
    """Untimed steps: cuDNN autotunes each new input shape, so multi-scale training gets twice
    its number of sizes (most sizes seen once) before the timed steps."""
    sizes = len(cfg.model.min_size_train) if not plan.dry_run else 0
    return max(plan.preset_warmup, 2 * sizes)


def _timing_key(cfg: Config) -> str:
    """What decides a step's cost: two presets that differ only in data or schedule share it."""
    d = cfg.to_dict()
    d.pop("data")
    d.pop("seed")
    for k in ("max_steps", "epochs", "warmup_steps", "step_milestones", "lr"):
        d["train"].pop(k)
    return json.dumps(d, sort_keys=True)


def time_preset(ctx: Context, cfg: Config) -> dict[str, Any]:
    """Seconds per training step (median of the timed steps) and per test image (eval batch)."""
    from frcnn.data.dataset import DetectionDataset, collate_fn
    from frcnn.engine.inference import load_detector, predict
    from frcnn.model.build import frozen_bn

    timed = timing_config(cfg, ctx.plan)
    warm = warmup_steps(cfg, ctx.plan)
    ckpt = ctx.work / "preset-timing.pt"
    run = train_run(timed, ctx.state["dataset"], ckpt, calibrate=frozen_bn(timed),
                    num_classes=VOC_NUM_CLASSES, untimed=warm)
    dataset = DetectionDataset(ctx.test_json, train=False, include_difficult=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=timed.eval.batch_size,
                                         collate_fn=collate_fn)
    model, _ = load_detector(ckpt, device=ctx.plan.device)
    device = torch.device(ctx.plan.device)
    sync = torch.cuda.synchronize if ctx.plan.device == "cuda" else (lambda: None)
    list(predict(model, loader, device, progress=False))  # warm-up
    sync()
    t0 = time.perf_counter()
    list(predict(model, loader, device, progress=False))
    sync()
    s_image = (time.perf_counter() - t0) / max(len(dataset), 1)
    del model
    free_memory()
    return {"s_per_step": run["s_per_step"], "s_per_step_mean": run["s_per_step_mean"],
            "timed_steps": ctx.plan.preset_steps, "warmup_steps": warm,
            "batch_size": timed.train.batch_size, "s_per_test_image": s_image,
            "eval_batch_size": timed.eval.batch_size, "timing_steps_run": run["steps"]}


def part_projection(ctx: Context) -> dict[str, Any]:
    """Each preset's full schedule projected from a few steps timed at its own settings."""
    from frcnn.tools.presets import load_presets

    presets = load_presets(ctx.presets_path)
    measured: dict[str, dict[str, Any]] = {}
    rows = []
    for name, preset in presets.items():
        cfg = preset.config(ctx.params)
        key = _timing_key(timing_config(cfg, ctx.plan))
        if key not in measured:
            measured[key] = time_preset(ctx, cfg)
        m = measured[key]
        steps = schedule_steps(cfg, preset.images_per_epoch)
        test_images = TEST_IMAGES.get(cfg.data.dataset,
                                      cfg.data.synth.num_test if cfg.data.dataset == "synth" else None)
        train_h = steps * m["s_per_step"] / 3600
        eval_h = test_images * m["s_per_test_image"] / 3600 if test_images else None
        rows.append({"preset": name, "steps": steps, "batch_size": cfg.train.batch_size,
                     "timed_batch_size": m["batch_size"],
                     "images_per_epoch": preset.images_per_epoch, "test_images": test_images,
                     **{k: m[k] for k in ("s_per_step", "s_per_step_mean", "s_per_test_image",
                                          "timed_steps", "warmup_steps")},
                     "train_hours": train_h, "eval_hours": eval_h,
                     "total_hours": train_h + (eval_h or 0.0),
                     "expected_gpu_time": preset.expected_gpu_time,
                     "timed_at": "toy sizes (dry run)" if ctx.plan.dry_run else "the preset's own",
                     "gpus": 1})
        print(f"projection {name}: {steps} steps x {m['s_per_step']:.3f} s = {train_h:.2f} h "
              f"(+ eval {eval_h or 0:.2f} h); stated: {preset.expected_gpu_time}", flush=True)
    result = {"presets": rows, "distinct_timings": len(measured),
              "note": ("model step with decoded images in memory (no JPEG decoding, no loader "
                       "workers); random weights with the preset's frozen BatchNorm/stem; "
                       "evaluation: the test set at the eval batch size, without the metrics")}
    checks = [(f"{r['preset']}: projected {r['total_hours']:.3g} h",
               math.isfinite(r["total_hours"]) and r["total_hours"] > 0) for r in rows]
    return verdict(result, checks)


# ---------------------------------------------------------------------------- the report


def machine(plan: Plan) -> dict[str, Any]:
    import torchvision

    def available(name: str) -> bool:  # found, not imported (mlflow and dvc take seconds)
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            return False

    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda, "threads": torch.get_num_threads(),
        "device": plan.device, "optional_packages": {n: available(n) for n in OPTIONAL_PACKAGES}}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(),
                    cudnn=torch.backends.cudnn.version(),
                    # "float32" on a GPU: cuDNN convolutions in TF32 unless this is false
                    tf32={"cudnn": torch.backends.cudnn.allow_tf32,
                          "matmul": torch.backends.cuda.matmul.allow_tf32})
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], check=False, cwd=REPO_ROOT,
            capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def imported_packages() -> list[str]:
    """The third-party top-level packages this process has imported (what a bare machine needs
    besides the standard library; the torchrun workers import a subset)."""
    names = {name.partition(".")[0] for name in list(sys.modules)}
    own = {"frcnn", "benchmarks", "__main__", "sitecustomize", "usercustomize"}
    return sorted(n for n in names - set(sys.stdlib_module_names) - own if not n.startswith("_"))


def overall(parts: dict[str, dict[str, Any]]) -> str:
    return "failed" if any(p.get("status") not in ("passed", "skipped") for p in parts.values()) \
        else "passed"


def write_reports(out: Path, report: dict[str, Any]) -> None:
    from frcnn.fileio import atomic_write_json, atomic_write_text

    atomic_write_json(out / "gpu_check.json", report, indent=1)
    atomic_write_text(out / "gpu_check.md", render_markdown(report))


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if math.isfinite(x) else "nan"
    return str(x)


def render_markdown(report: dict[str, Any]) -> str:
    meta, parts, plan = report["meta"], report["parts"], report["plan"]
    dry = " --dry-run" if meta["dry_run"] else ""
    title = "# GPU check" + (" (dry run: CPU, toy sizes; the numbers mean nothing)" if dry else "")
    written = (f"Written by `python benchmarks/gpu_check.py{dry}` on {meta['date']} in "
               f"{_f(meta.get('seconds'), 0)} s: **{report['status']}**.")
    device = (f"- device: {meta.get('gpu', 'CPU')} ({meta['device']}), torch {meta['torch']}, "
              f"torchvision {meta['torchvision']}, CUDA {meta['cuda']}, python {meta['python']}, "
              f"git {meta.get('git_commit')}")
    optional = "- optional packages present: " + ", ".join(
        f"{k} {'yes' if v else 'no'}" for k, v in meta["optional_packages"].items())
    sizes = (f"- plan: {plan['steps']} steps per precision (window {plan['window']}), images "
             f"{plan['image_hw']}, {plan['n_train']} train / {plan['n_test']} test")
    lines = [title, "", written, "", device, optional, sizes, "",
             "| part | status | seconds | detail |", "|---|---|---|---|"]
    for name, p in parts.items():
        detail = p.get("error") or p.get("reason") or "; ".join(
            c["check"] for c in p.get("checks", [])[:4])
        lines.append(f"| {name} | {p.get('status')} | {_f(p.get('seconds'), 1)} | "
                     f"{detail.replace('|', '/')} |")
    tolerances = ", ".join(f"{k} {v:g}" for k, v in report["tolerances"].items())
    lines += ["", f"Tolerances (`TOL` in the script): {tolerances}.", ""]
    renderers = {"precision": _md_precision, "resume": _md_resume, "distributed": _md_distributed,
                 "eval_devices": _md_eval, "speed": _md_speed, "projection": _md_projection}
    for name, render in renderers.items():
        p = parts.get(name)
        if p is None:
            continue
        lines += ["", f"## {name}: {p.get('status')}", ""]
        if "checks" in p:
            lines += [f"- {'ok' if c['ok'] else 'FAILED'}: {c['check']}" for c in p["checks"]]
            lines += ["", *render(p)]
        else:
            lines.append(p.get("error") or p.get("reason") or "")
    return "\n".join(lines) + "\n"


def _md_precision(p: dict[str, Any]) -> list[str]:
    header = ("| precision | status | steps | s/step | first loss | last loss | window mean | "
              "level Δ | step Δ | skipped | final scale |")
    rows = [header, "|---" * 11 + "|"]
    for name, r in p["runs"].items():
        if r["status"] in ("skipped", "failed"):
            why = r.get("reason") or r.get("error")
            rows.append(f"| {name} | {r['status']}: {why} |" + " |" * 9)
            continue
        c = p["comparisons"].get(name, {})
        losses = r["losses"]
        mean = c.get("mean") if c else statistics.fmean(losses[-p["window"]:])
        rows.append(f"| {name} | {r['status']} | {r['steps']} | {_f(r['s_per_step'])} | "
                    f"{_f(losses[0])} | {_f(losses[-1])} | {_f(mean)} | "
                    f"{_f(c.get('level_rel'))} | {_f(c.get('step_rel'))} | "
                    f"{len(r['skipped_updates'])} | {_f(r['final_scale'], 0)} |")
    return rows


def _md_resume(p: dict[str, Any]) -> list[str]:
    c = p.get("comparison", {})
    line = (f"{p['precision']}: stopped at step {p['stopped_at']}, resumed to {p['steps']} "
            f"(uninterrupted: {p['reference_steps']}); bit-identical losses: {p['bit_identical']}")
    if c:
        line += f"; level Δ {_f(c['level_rel'])}, step Δ {_f(c['step_rel'])}"
    line += f"; final scale {p['final_scale']} (uninterrupted {p['reference_final_scale']})"
    return [line]


def _md_distributed(p: dict[str, Any]) -> list[str]:
    line = (f"{p['world_size']} process(es), {p['backend']}: {p['steps']} steps in "
            f"{p['train_seconds']} s "
            f"({p['images_per_s']} images/s), launch to exit {p['wall_s']} s. ")
    return [line + p.get("note", "")]


def _md_eval(p: dict[str, Any]) -> list[str]:
    m, a, b = p["match"], p["ap"]["a"], p["ap"]["b"]
    where = (f"Checkpoint: {p['checkpoint']}; {p['images']} test images; sides {p['sides']} "
             f"({p['seconds']} s).")
    paired = (f"Detections {m['detections_a']} / {m['detections_b']}, paired {m['paired']} "
              f"(rate {_f(m['match_rate'])}), max box Δ {_f(m['max_box_diff_px'], 4)} px, "
              f"max score Δ {_f(m['max_score_diff'], 5)}.")
    rows = [where, "", paired, "", "| AP | " + " | ".join(p["sides"]) + " |", "|---|---|---|"]
    for key in ("voc07_map", "voc10_map", "coco_map", "coco_ap50"):
        if key in a:
            rows.append(f"| {key} | {_f(a[key], 4)} | {_f(b.get(key), 4)} |")
    if "coco_skipped" in a:
        rows += ["", f"COCO AP skipped: {a['coco_skipped']}"]
    return rows


def _md_speed(p: dict[str, Any]) -> list[str]:
    header = ("| figure | amp | ours | torchvision | ratio | paired | p25-p75 | "
              "peak MiB ours / tv |")
    rows = [f"Size {p['size']}.", "", header, "|---" * 8 + "|"]
    for r in p["records"]:
        mem = r["peak_memory_mib"]
        mem_s = (f"{mem['ours']:.0f} / {mem['torchvision']:.0f}" if "ours" in mem
                 else mem.get("skipped", ""))
        rows.append(f"| {r['figure']} | {r['amp']} | {_f(r['ours'], 4)} | "
                    f"{_f(r['torchvision'], 4)} {r['unit']} | {_f(r['ratio'], 2)} | "
                    f"{_f(r['ratio_paired'], 2)} | {_f(r.get('ratio_p25'), 2)}-"
                    f"{_f(r.get('ratio_p75'), 2)} | {mem_s} |")
    return rows


def _md_projection(p: dict[str, Any]) -> list[str]:
    rows = ["| preset | steps x batch | s/step | train h | eval h | total h | stated |",
            "|---" * 7 + "|"]
    for r in p["presets"]:
        rows.append(f"| {r['preset']} | {r['steps']} x {r['batch_size']} | {_f(r['s_per_step'])} "
                    f"| {_f(r['train_hours'], 2)} | {_f(r['eval_hours'], 2)} | "
                    f"{_f(r['total_hours'], 2)} | {r['expected_gpu_time']} |")
    return [*rows, "", p["note"]]


# ---------------------------------------------------------------------------- main


PART_FUNCTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "precision": part_precision, "resume": part_resume, "distributed": part_distributed,
    "eval_devices": part_eval_devices, "speed": part_speed, "projection": part_projection}


def run_part(name: str, ctx: Context) -> dict[str, Any]:
    """One part, whatever happens: passed/failed with its checks, skipped with a reason, or
    failed with the exception's first line."""
    print(f"== {name}", flush=True)
    t0 = time.perf_counter()
    try:
        result = PART_FUNCTIONS[name](ctx)
    except Skipped as exc:
        result = {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - recorded; the other parts still run
        traceback.print_exc()
        result = {"status": "failed", "error": one_line(exc)}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"== {name}: {result['status']} ({result['seconds']} s)"
          + (f": {result.get('error') or result.get('reason')}"
             if result["status"] != "passed" else ""), flush=True)
    return result


def output_dir(out: Path | None, dry_run: bool) -> Path:
    """`out`, or reports/ for a real run; a dry run without --out gets a new temporary folder, so
    it never overwrites the committed reports/gpu_check.*."""
    if out is not None:
        return out
    if dry_run:
        return Path(tempfile.mkdtemp(prefix="gpu_check_dry_"))
    return REPO_ROOT / "reports"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="every part on the CPU at toy sizes (the report's numbers mean nothing)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default: reports/; dry run: a new temporary folder)")
    parser.add_argument("--params", type=Path, default=REPO_ROOT / "params.yaml")
    parser.add_argument("--presets", type=Path, default=REPO_ROOT / "presets.yaml")
    parser.add_argument("--steps", type=int, default=None,
                        help="part 1's steps per precision (default 300; dry run 6)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--dist-worker", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dist_worker is not None:
        dist_worker(args.dist_worker)
        return 0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"--parts: unknown {', '.join(unknown)} (known: {', '.join(PARTS)})", file=sys.stderr)
        return 2
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; on a CPU run `--dry-run`", file=sys.stderr)
        return 2
    steps = args.steps or (6 if args.dry_run else 300)
    if steps < 2:
        print("--steps: must be >= 2 (the resume stops at steps / 2)", file=sys.stderr)
        return 2
    plan = dry_plan(steps) if args.dry_run else gpu_plan(steps)
    out = output_dir(args.out, args.dry_run)
    out.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check{' --dry-run' if plan.dry_run else ''}: report -> {out}", flush=True)
    t_start = time.perf_counter()
    params = yaml.safe_load(Path(args.params).read_text()) or {}
    report: dict[str, Any] = {
        "meta": {**machine(plan), "dry_run": plan.dry_run, "argv": sys.argv[1:]},
        "plan": {k: v for k, v in plan.__dict__.items() if k not in ("model", "preset_toy")}
        | {"model_overrides": plan.model}, "tolerances": TOL, "parts": {}, "status": "running"}
    with tempfile.TemporaryDirectory(prefix="gpu_check_work_") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        train_json = write_synthetic_split(work / "data", "trainval", plan.n_train, plan.image_hw)
        test_json = write_synthetic_split(work / "data", "test", plan.n_test, plan.image_hw)
        ctx = Context(plan, work, params, Path(args.presets), train_json, test_json)
        ctx.state["dataset"] = InMemory(train_json)
        report["meta"]["data_seconds"] = round(time.perf_counter() - t0, 1)
        for name in parts:
            report["parts"][name] = run_part(name, ctx)
            report["meta"]["seconds"] = round(time.perf_counter() - t_start, 1)
            write_reports(out, report)
    report["status"] = overall(report["parts"])
    report["meta"]["seconds"] = round(time.perf_counter() - t_start, 1)
    report["meta"]["imported_packages"] = imported_packages()
    write_reports(out, report)
    print(f"gpu_check: {report['status']} in {report['meta']['seconds']} s; wrote "
          f"{out / 'gpu_check.json'} and {out / 'gpu_check.md'}", flush=True)
    return 0 if report["status"] == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())

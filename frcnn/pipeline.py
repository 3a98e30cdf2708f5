"""The train and evaluate stages: config in, files out. `stages/*.py` and `frcnn <stage>` call these.

Paths are the pipeline's fixed layout (dvc.yaml declares the same ones):
  data/processed/trainval.json  → pretrain → models/backbone.pt, reports/pretrain.json
  data/augmented/trainval.json (+ models/backbone.pt) → train → models/model.pt,
      reports/train/{loss.csv,summary.json}
  data/processed/test.json + models/model.pt → evaluate → reports/{metrics.json, per_class_ap.csv,
      pr_curves.csv, pr_curves.png, detections.png}, data/detections/test.json (COCO results)
Every file is written to a temp name and renamed, so an interrupted stage leaves no half-file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

from frcnn.ablation import PUBLISHED, ablation_tags
from frcnn.checkpoint import CheckpointError, check_compatible, load_checkpoint, save_checkpoint
from frcnn.config import Config, load_config
from frcnn.data.dataset import DetectionDataset, collate_fn
from frcnn.engine import (init_distributed, predict, seed_everything, select_device,
                          to_coco_results, train)
from frcnn.inference import load_detector
from frcnn.model.faster_rcnn import FasterRCNN, build_model
from frcnn.pretrain import pretrain_backbone
from frcnn.reports import (atomic_write_text, plot_detection_grid, plot_pr_curves,
                           pr_curves_table, write_per_class_csv)
from frcnn.evaluation import coco_metrics, voc_metrics
from frcnn.tracking import Tracker, default_tags

PRETRAIN_JSON = Path("data/processed/trainval.json")
BACKBONE = Path("models/backbone.pt")
TRAIN_JSON = Path("data/augmented/trainval.json")
TEST_JSON = Path("data/processed/test.json")
CHECKPOINT = Path("models/model.pt")
TRAIN_REPORTS = Path("reports/train")
REPORTS = Path("reports")
DETECTIONS = Path("data/detections/test.json")


def tracking_root(root: Path) -> Path:
    """Where the MLflow store lives: the project itself, also for a queued DVC experiment, which
    runs in a temporary copy under <project>/.dvc/tmp/exps/ that is deleted afterwards."""
    resolved = root.resolve()
    parts = resolved.parts
    for i in range(len(parts) - 3):
        if parts[i: i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return resolved


def _json_safe(obj: Any) -> Any:
    """NaN (e.g. AP of a size bucket without objects) -> null: strict JSON has no NaN."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_json_safe(obj), indent=2, sort_keys=True) + "\n")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _pretrain_key(cfg: Config) -> dict[str, Any]:
    """What models/backbone.pt must have been made with to be used by this config."""
    return {"seed": cfg.seed, "model.backbone": cfg.model.backbone,
            **{f"pretrain.{k}": v for k, v in cfg.to_dict()["pretrain"].items()}}


def run_pretrain(params: Path = Path("params.yaml"), root: Path = Path("."),
                 overrides: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Pretrain the backbone on trainval object crops -> models/backbone.pt, reports/pretrain.json.

    With `pretrain.steps: 0` nothing is trained: the file records that, and the detector starts
    from random (or, with model.pretrained, ImageNet) weights.
    """
    cfg = load_config(root / params, overrides)
    weights, summary = None, {"steps": 0}
    if cfg.pretrain.steps:
        weights, summary = pretrain_backbone(cfg, root / PRETRAIN_JSON, progress=progress)
        print(f"pretrain: held-out crop accuracy {summary['heldout_accuracy']:.3f} "
              f"(chance {summary['chance_accuracy']:.3f}) after {summary['steps']} steps, "
              f"{summary['seconds']} s")
    save_checkpoint(root / BACKBONE, {"backbone": weights, "made_with": _pretrain_key(cfg),
                                      "summary": summary})
    _write_json(root / REPORTS / "pretrain.json", summary)
    return summary


def load_pretrained_backbone(model: FasterRCNN, path: Path, cfg: Config) -> dict[str, Any] | None:
    """With pretrain.steps > 0: the pretrain stage's trunk weights into `model`; returns its
    summary. A missing file or one made with other settings is an error naming the file."""
    if not cfg.pretrain.steps:
        return None
    if not path.exists():
        raise CheckpointError(f"{path}: not found; pretrain.steps is {cfg.pretrain.steps}, so run "
                              f"`frcnn pretrain` first (dvc repro does) or set pretrain.steps: 0")
    state = load_checkpoint(path)
    made_with, wanted = state.get("made_with") or {}, _pretrain_key(cfg)
    stale = [f"{k} ({made_with.get(k)!r} there, {v!r} now)" for k, v in wanted.items()
             if made_with.get(k) != v]
    if stale or state.get("backbone") is None:
        raise CheckpointError(f"{path}: made with other settings ({'; '.join(stale) or 'no weights'}); "
                              f"run `frcnn pretrain` again")
    model.backbone.load_state_dict(state["backbone"])
    return state.get("summary")


def run_train(params: Path = Path("params.yaml"), resume: bool = False,
              root: Path = Path("."), overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train on the augmented trainval split; returns the summary written to summary.json.

    Under torchrun every rank runs this; rank 0 alone tracks and writes files.
    """
    cfg = load_config(root / params, overrides)
    dist_info = init_distributed(cfg.train.device)
    try:
        seed_everything(cfg.seed)  # the same initial weights on every rank
        dataset = DetectionDataset(root / TRAIN_JSON, train=True)
        model = build_model(cfg, num_classes=cfg.model.num_classes or dataset.num_classes)
        pretrained = load_pretrained_backbone(model, root / BACKBONE, cfg)
        if dist_info.rank:
            seed_everything(cfg.seed + dist_info.rank)  # each rank samples anchors/RoIs its own way
        checkpoint = root / CHECKPOINT
        run_id = None
        if resume and checkpoint.exists():
            state = load_checkpoint(checkpoint)
            # refuse an incompatible checkpoint before MLflow hears of it: a refused resume must
            # not reopen (and mark FAILED) the finished run, nor log clashing params into it
            check_compatible(checkpoint, state, cfg.to_dict())
            run_id = state.get("mlflow_run_id") or None
        tracker = Tracker.disabled()
        if dist_info.is_main:
            tracker = Tracker.start(tracking_root(root), run_name=os.environ.get("DVC_EXP_NAME"),
                                    params=cfg.flat(),
                                    tags={**default_tags(root, cfg.data.dataset), "stage.train": "done",
                                          **ablation_tags(root, cfg.to_dict())},
                                    run_id=run_id)
        with tracker:
            result = train(model, dataset, collate_fn, cfg, checkpoint, resume=resume,
                           extra_state={"num_classes": dataset.num_classes,
                                        "class_names": list(dataset.class_names),
                                        "mlflow_run_id": tracker.run_id or ""},
                           on_log=lambda step, row: tracker.log_metrics(
                               {k: v for k, v in row.items() if k != "step"}, step=step),
                           dist_info=dist_info)
            if not dist_info.is_main:
                return {}
            last = result.history[-1] if result.history else {}
            summary = {"steps": result.step, "train_seconds": round(result.seconds, 1),
                       "images_per_s": round(result.images_per_s, 2),
                       "final_loss": round(last.get("loss", float("nan")), 4),
                       "world_size": dist_info.world_size}
            _write_csv(root / TRAIN_REPORTS / "loss.csv", result.history)
            _write_json(root / TRAIN_REPORTS / "summary.json", summary)
            tracker.log_metrics({f"train.{k}": v for k, v in summary.items()})
            if pretrained:
                tracker.log_metrics({f"pretrain.{k}": v for k, v in pretrained.items()
                                     if isinstance(v, (int, float))})
            tracker.log_artifact(root / TRAIN_REPORTS / "loss.csv")
            tracker.log_dict(cfg.to_dict(), "params.json")
            tracker.set_tags({"checkpoint": str(checkpoint.resolve())})
        return summary
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_evaluate(params: Path = Path("params.yaml"), root: Path = Path("."),
                 checkpoint: Path = CHECKPOINT, overrides: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """Detect on the test split, score with pycocotools and the VOC devkit rules, write reports."""
    cfg = load_config(root / params, overrides)
    state = load_checkpoint(root / checkpoint)
    dataset = DetectionDataset(root / TEST_JSON, train=False, include_difficult=True)
    model, names = load_detector(root / checkpoint, inference=cfg)
    if list(dataset.class_names) != names:
        raise ValueError(f"{root / TEST_JSON}: classes {list(dataset.class_names)} differ from "
                         f"the checkpoint's {names}")
    device = select_device(cfg.train.device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.eval.batch_size,
                                         collate_fn=collate_fn, num_workers=cfg.train.num_workers)
    results: list[dict[str, Any]] = []
    preview: list[tuple[Any, Any]] = []
    for image, target, det in predict(model, loader, device):
        results.extend(to_coco_results(target["image_id"], det))
        if len(preview) < cfg.eval.num_preview:
            preview.append((image, target, det))
    gt = json.loads((root / TEST_JSON).read_text())
    coco = coco_metrics(gt, results)
    voc = voc_metrics(gt, results)
    metrics = {"map": coco["map"], "ap50": coco["ap50"], "ap75": coco["ap75"],
               "ap_small": coco["ap_small"], "ap_medium": coco["ap_medium"],
               "ap_large": coco["ap_large"], "voc07_ap50": voc["voc07_map"],
               "voc10_ap50": voc["voc10_map"], "num_images": len(dataset),
               "num_detections": len(results)}
    _write_json(root / DETECTIONS, results)
    _write_json(root / REPORTS / "metrics.json", metrics)
    write_per_class_csv(root / REPORTS / "per_class_ap.csv", coco, voc, names)
    _write_csv(root / REPORTS / "pr_curves.csv", pr_curves_table(voc, names))
    plot_pr_curves(voc, names, root / REPORTS / "pr_curves.png")
    plot_detection_grid([(img * 255).byte().permute(1, 2, 0).numpy() for img, _, _ in preview],
                        [{k: v.numpy() for k, v in d.items()} for _, _, d in preview],
                        [{"boxes": t["boxes"].numpy(), "labels": t["labels"].numpy()}
                         for _, t, _ in preview], names, root / REPORTS / "detections.png")

    run_id = state.get("mlflow_run_id") or None
    tracker = Tracker.start(tracking_root(root), run_name=os.environ.get("DVC_EXP_NAME"),
                            params=cfg.flat(),
                            tags={**default_tags(root, cfg.data.dataset), "stage.evaluate": "done",
                                  **ablation_tags(root, cfg.to_dict())},
                            run_id=run_id)
    with tracker:
        tracker.log_metrics({k: float(v) for k, v in metrics.items() if not math.isnan(v)})
        tracker.log_metrics({f"ap50.{n}": float(coco["per_class_ap50"][n]) for n in names})
        for name in ("metrics.json", "per_class_ap.csv", "pr_curves.png", "detections.png"):
            tracker.log_artifact(root / REPORTS / name)
    print(json.dumps(metrics, indent=2), file=sys.stderr)
    return metrics




def run_report(params: Path = Path("params.yaml"), root: Path = Path(".")) -> Path:
    """reports/report.md: this run's metrics and per-class AP beside the published baselines."""
    cfg = load_config(root / params)
    metrics = json.loads((root / REPORTS / "metrics.json").read_text())
    train_summary = json.loads((root / TRAIN_REPORTS / "summary.json").read_text())
    per_class = list(csv.DictReader(io.StringIO((root / REPORTS / "per_class_ap.csv").read_text())))
    lines = [f"# frcnn report: {cfg.data.dataset}, {cfg.model.backbone}, "
             f"{cfg.model.min_size}/{cfg.model.max_size} px", "",
             "## Measured here", "",
             "| metric | value |", "|---|---|"]
    labels = {"map": "mAP@[.5:.95] (COCO)", "ap50": "AP50 (COCO, 101-point)",
              "ap75": "AP75 (COCO)", "voc07_ap50": "VOC07 AP50 (11-point, devkit rules)",
              "voc10_ap50": "VOC2010+ AP50 (all-point)", "ap_small": "AP small",
              "ap_medium": "AP medium", "ap_large": "AP large"}
    lines += [f"| {label} | {metrics[k]:.4f} |" for k, label in labels.items()
              if metrics.get(k) is not None]
    lines += [f"| training | {train_summary['steps']} steps, {train_summary['train_seconds']:.0f} s,"
              f" {train_summary['images_per_s']:.1f} img/s |", "",
              "## Per class", ""]
    if per_class:
        head = list(per_class[0])
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row[h] for h in head) + " |" for row in per_class]
    lines += ["", "## Published (not measured here: VOC2007 test, AP50 %)", "",
              "| method | mAP | speed |", "|---|---|---|"]
    lines += [f"| {m} | {ap} | {speed} |" for m, ap, speed in PUBLISHED]
    lines += ["", "Plots: `train/loss.csv` (DVC plot), `pr_curves.png`, `detections.png`.", ""]
    path = root / REPORTS / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path

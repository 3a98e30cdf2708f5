"""The `train` stage: data/augmented/trainval.json (+ models/backbone.pt) -> models/model.pt,
reports/train/{loss.csv, summary.json}, and an MLflow run with the params and losses.

Under `torchrun` every rank runs this; rank 0 alone tracks and writes files.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from frcnn.config import Config
from frcnn.data.dataset import DetectionDataset, collate_fn
from frcnn.engine.checkpoint import auto_resume as decide_auto_resume
from frcnn.engine.checkpoint import check_compatible, load_checkpoint, resume_copy
from frcnn.engine.device import seed_everything
from frcnn.engine.distributed import init_distributed, steps_per_epoch
from frcnn.engine.pretrain import load_pretrained_backbone
from frcnn.engine.trainer import TrainResult, train
from frcnn.errors import CheckpointError
from frcnn.fileio import (
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    check_writable,
    transaction,
)
from frcnn.model.build import build_model, recipe_warnings
from frcnn.pipeline.command import ParamsOpt, SetOpt, load, stage_main, user_errors
from frcnn.pipeline.tracking import Tracker, start_stage_run, tracking_root


def resumed_run_id(cfg: Config, checkpoint: Path, resume: bool) -> str | None:
    """The MLflow run a resumed training continues; refuses an incompatible checkpoint first, so
    a refused resume never reopens (and marks FAILED) the finished run nor logs clashing params."""
    if not (resume and checkpoint.exists()):
        return None
    state = load_checkpoint(checkpoint)
    check_compatible(checkpoint, state, cfg.to_dict())
    return state.get("mlflow_run_id") or None


def summarise(result: TrainResult, world_size: int, advice: list[str] = ()) -> dict[str, Any]:
    """reports/train/summary.json's content; `advice`: the config's `recipe_warnings`."""
    last = result.history[-1] if result.history else {}
    summary = {"steps": result.step, "train_seconds": round(result.seconds, 1),
               "images_per_s": round(result.images_per_s, 2),
               "final_loss": round(last.get("loss", float("nan")), 4), "world_size": world_size}
    warnings = [*advice, *result.warnings]
    if warnings:  # e.g. a diverging loss: kept beside the numbers it puts in doubt
        summary["warnings"] = warnings
    return summary


def run(cfg: Config, *, train_json: Path, backbone: Path, checkpoint: Path, reports: Path,
        resume: bool = False, auto_resume: bool = False, project: Path = Path(".")
        ) -> dict[str, Any]:
    """Train on `train_json`; returns the summary written to `reports/summary.json`.

    `resume`: continue the checkpoint (by hand: the budget may have grown; an error when there is
    none). `auto_resume` (what `dvc repro` runs): continue it only if it is an unfinished run of
    exactly this training (`checkpoint.auto_resume`), else start from step 0, saying why."""
    dist_info = init_distributed(cfg.train.device)
    try:
        seed_everything(cfg.seed)  # the same initial weights on every rank
        dataset = DetectionDataset(train_json, train=True)
        model = build_model(cfg, num_classes=cfg.model.num_classes or dataset.num_classes)
        advice = recipe_warnings(cfg)
        for line in advice if dist_info.is_main else ():
            print(f"train: warning: {line}", file=sys.stderr)
        pretrained = load_pretrained_backbone(model, Path(backbone), cfg)
        if dist_info.rank:
            seed_everything(cfg.seed + dist_info.rank)  # each rank samples anchors/RoIs its own way
        checkpoint = Path(checkpoint)
        if dist_info.is_main:  # weights + AdamW's two moments, the new file beside the old one
            weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
            check_writable(checkpoint, reports / "loss.csv", need_bytes=6 * weight_bytes + 2**24)
        if resume and not checkpoint.exists():
            raise CheckpointError(f"--resume: {checkpoint}: no checkpoint to continue (drop "
                                  "--resume to train from step 0)")
        mirror = resume_copy(tracking_root(project), cfg.to_dict()) if auto_resume else None
        if auto_resume and not resume:
            total = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch(
                len(dataset), cfg.train.batch_size, dist_info.world_size)
            resume, why = decide_auto_resume(checkpoint, cfg.to_dict(), total)
            if not resume and mirror is not None and mirror.is_file():
                # this workspace lost its checkpoint (a queued experiment's temporary copy):
                # the copy kept in the project continues it, under the same rules
                resume, from_copy = decide_auto_resume(mirror, cfg.to_dict(), total)
                if resume and dist_info.is_main:
                    atomic_write_bytes(checkpoint, mirror.read_bytes(), immediate=True)
                    why = f"{from_copy} (the copy kept for reruns, -> {checkpoint})"
            if dist_info.is_main:
                print(why, file=sys.stderr)
            if torch.distributed.is_initialized():
                torch.distributed.barrier()  # every rank reads the restored checkpoint
        run_id = resumed_run_id(cfg, checkpoint, resume)
        tracker = Tracker.disabled()
        if dist_info.is_main:
            tracker = start_stage_run(project, cfg, "train", run_id=run_id)
        with tracker:
            result = train(model, dataset, collate_fn, cfg, checkpoint, resume=resume,
                           extra_state={"num_classes": dataset.num_classes,
                                        "class_names": list(dataset.class_names),
                                        "mlflow_run_id": tracker.run_id or ""},
                           on_log=lambda step, row: tracker.log_metrics(
                               {k: v for k, v in row.items() if k != "step"}, step=step),
                           dist_info=dist_info, mirror_path=mirror)
            if not dist_info.is_main:
                return {}
            if mirror is not None:  # finished: the checkpoint is the stage's output now
                mirror.unlink(missing_ok=True)
            summary = summarise(result, dist_info.world_size, advice)
            with transaction():
                atomic_write_csv(reports / "loss.csv", result.history)
                atomic_write_json(reports / "summary.json", summary, sort_keys=True)
            tracker.log_metrics({f"train.{k}": v for k, v in summary.items()
                                 if isinstance(v, (int, float))})
            if summary.get("warnings"):
                tracker.set_tags({"train.warnings": " | ".join(summary["warnings"])})
            if pretrained:
                tracker.log_metrics({f"pretrain.{k}": v for k, v in pretrained.items()
                                     if isinstance(v, (int, float))})
            tracker.log_artifact(reports / "loss.csv")
            tracker.log_dict(cfg.to_dict(), "params.json")
            tracker.set_tags({"checkpoint": str(checkpoint.resolve())})
            tracker.log_dataset(train_json, context="train")
            if cfg.tracking.log_model:  # its input example: the first training images
                tracker.log_model(checkpoint, [Path(im["path"]) for im in dataset.images[:2]])
        return summary
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def command(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
            resume: Annotated[bool, typer.Option(help="continue from the checkpoint")] = False,
            auto_resume: Annotated[bool, typer.Option(
                help="continue the checkpoint only if it is an unfinished run of exactly these "
                     "params and code, else start over (what `dvc repro` runs)")] = False,
            data: Annotated[Path, typer.Option(help="training split (COCO JSON)")] = Path("data/augmented/trainval.json"),
            backbone: Annotated[Path, typer.Option(help="pretrain's output (used when pretrain.steps > 0)")] = Path("models/backbone.pt"),
            checkpoint: Annotated[Path, typer.Option(help="checkpoint to write")] = Path("models/model.pt"),
            reports: Annotated[Path, typer.Option(help="folder for loss.csv, summary.json")] = Path("reports/train"),
            ) -> None:
    """Train the detector (models/model.pt, reports/train/). Runs under torchrun too."""
    cfg = load(params, set_)
    with user_errors(ValueError):
        run(cfg, train_json=data, backbone=backbone, checkpoint=checkpoint, reports=reports,
            resume=resume, auto_resume=auto_resume)


if __name__ == "__main__":
    stage_main(command)

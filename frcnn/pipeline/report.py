"""The `report` stage: metrics.json, per_class_ap.csv and train/summary.json -> report.md, this
run's numbers beside the published baselines."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Annotated

import typer

from frcnn.config import Config
from frcnn.fileio import atomic_write_text, check_writable
from frcnn.pipeline.command import ParamsOpt, SetOpt, load, stage_main, user_errors

PUBLISHED = [  # the reference design's baseline table: published numbers, VOC2007 test, AP50 %
    ("R-CNN (Selective Search + AlexNet, fc7 + box regression; R-CNN paper, Table 2)", 58.5,
     "~13 s/image on a GPU (the ~47 s/image often quoted is R-CNN with VGG16)"),
    ("Fast R-CNN (VGG16, VOC07 trainval)", 66.9, "0.32 s/image + ~2 s of Selective Search"),
    ("Faster R-CNN (VGG16, VOC07 trainval)", 69.9, "0.198 s/image (K40)"),
]


def run(cfg: Config, *, metrics_json: Path, per_class_csv: Path, train_summary_json: Path,
        out: Path) -> Path:
    """Write `out` (markdown) from the evaluate and train stages' outputs; returns `out`."""
    check_writable(out)
    metrics = json.loads(Path(metrics_json).read_text())
    train_summary = json.loads(Path(train_summary_json).read_text())
    per_class = list(csv.DictReader(io.StringIO(Path(per_class_csv).read_text())))
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
    atomic_write_text(out, "\n".join(lines))
    return Path(out)


def command(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
            reports: Annotated[Path, typer.Option(help="folder of the evaluate stage's outputs")] = Path("reports"),
            train_reports: Annotated[Path, typer.Option(help="folder of the train stage's outputs")] = Path("reports/train"),
            ) -> None:
    """This run's report: reports/report.md (metrics, per-class AP, published baselines)."""
    cfg = load(params, set_)
    with user_errors(OSError, ValueError):
        path = run(cfg, metrics_json=reports / "metrics.json",
                   per_class_csv=reports / "per_class_ap.csv",
                   train_summary_json=train_reports / "summary.json", out=reports / "report.md")
    typer.echo(f"-> {path}")


if __name__ == "__main__":
    stage_main(command)

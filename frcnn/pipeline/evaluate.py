"""The `evaluate` stage: a checkpoint + the test split -> metrics, per-class AP, PR curves, the
TIDE error breakdown, a detection grid, the detections as COCO results, and the metrics in the
train stage's MLflow run.

The checkpoint's architecture is used; the inference-only keys (`rpn.*_test`, `roi.score_thresh`,
`roi.nms_thresh`, `roi.detections_per_img`) come from the current params.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from frcnn.config import Config
from frcnn.data.dataset import DetectionDataset, collate_fn
from frcnn.engine.checkpoint import load_checkpoint
from frcnn.engine.device import select_device
from frcnn.engine.inference import load_detector, predict, to_coco_results
from frcnn.evaluation.coco import coco_metrics
from frcnn.evaluation.errors import tide_breakdown
from frcnn.evaluation.tables import pr_curves_table, write_per_class_csv
from frcnn.evaluation.voc import voc_metrics
from frcnn.fileio import atomic_write_csv, atomic_write_json, check_writable, transaction
from frcnn.pipeline.command import ParamsOpt, SetOpt, load, stage_main, user_errors
from frcnn.pipeline.tracking import start_stage_run
from frcnn.plots.evaluation import plot_detection_grid, plot_errors, plot_pr_curves


def detect(cfg: Config, test_json: Path, checkpoint: Path
           ) -> tuple[list[dict[str, Any]], list[tuple[Any, Any, Any]], list[str], int]:
    """COCO results of the checkpoint's detector on `test_json`, the first `eval.num_preview`
    (image, target, detections), the class names and the number of images."""
    dataset = DetectionDataset(test_json, train=False, include_difficult=True)
    model, names = load_detector(checkpoint, inference=cfg)
    if list(dataset.class_names) != names:
        raise ValueError(f"{test_json}: classes {list(dataset.class_names)} differ from "
                         f"the checkpoint's {names}")
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.eval.batch_size,
                                         collate_fn=collate_fn, num_workers=cfg.train.num_workers)
    results: list[dict[str, Any]] = []
    preview: list[tuple[Any, Any, Any]] = []
    for image, target, det in predict(model, loader, select_device(cfg.train.device),
                                      amp=cfg.eval.amp, channels_last=cfg.eval.channels_last):
        results.extend(to_coco_results(target["image_id"], det))
        if len(preview) < cfg.eval.num_preview:
            preview.append((image, target, det))
    return results, preview, names, len(dataset)


def architecture_note(checkpoint: Path, trained: dict[str, Any], cfg: Config) -> str:
    """One line when params.yaml's model differs from the checkpoint's: the checkpoint's is used
    (only the inference-only keys come from the params)."""
    from frcnn.config import flatten
    from frcnn.engine.checkpoint import INFERENCE_ONLY_KEYS

    a, b = flatten(trained), flatten(cfg.to_dict())
    keys = [k for k in sorted(set(a) | set(b)) if k.split(".")[0] in ("model", "anchors", "rpn", "roi")
            and k not in INFERENCE_ONLY_KEYS and k not in ("rpn.nms_thresh", "rpn.min_box_size")
            and a.get(k) != b.get(k)]
    if not keys:
        return ""
    shown = "; ".join(f"{k}={a.get(k)!r} (params: {b.get(k)!r})" for k in keys[:4])
    more = f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""
    return (f"evaluate: {checkpoint} was trained with {shown}{more}: the checkpoint's architecture "
            "is used; only the inference-only keys come from the params")


def score(gt: dict[str, Any], results: list[dict[str, Any]]
          ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The metrics of metrics.json for COCO `results` on `gt`, and the full COCO and VOC outputs."""
    coco = coco_metrics(gt, results)
    voc = voc_metrics(gt, results)
    metrics = {"map": coco["map"], "ap50": coco["ap50"], "ap75": coco["ap75"],
               "ap_small": coco["ap_small"], "ap_medium": coco["ap_medium"],
               "ap_large": coco["ap_large"], "voc07_ap50": voc["voc07_map"],
               "voc10_ap50": voc["voc10_map"], "num_images": len(gt["images"]),
               "num_detections": len(results)}
    return metrics, coco, voc


def run(cfg: Config, *, test_json: Path, checkpoint: Path, reports: Path, detections: Path,
        project: Path = Path(".")) -> dict[str, Any]:
    """Detect on the test split, score with pycocotools and the VOC devkit rules, break the lost
    AP50 down by error type (TIDE), write `reports/{metrics.json, errors.json, per_class_ap.csv,
    pr_curves.csv, pr_curves.png, errors.png, detections.png}` and
    `detections`; log them to the MLflow run of `project`'s store that trained the checkpoint."""
    check_writable(detections, reports / "metrics.json", need_bytes=2**23)
    state = load_checkpoint(checkpoint)
    note = architecture_note(checkpoint, state.get("config", {}), cfg)
    if note:
        print(note, file=sys.stderr)
    results, preview, names, _ = detect(cfg, test_json, checkpoint)
    gt = json.loads(Path(test_json).read_text())
    metrics, coco, voc = score(gt, results)
    errors = tide_breakdown(gt, results)
    with transaction():  # every output lands together, or none does
        atomic_write_json(detections, results, sort_keys=True)
        atomic_write_json(reports / "metrics.json", metrics, sort_keys=True)
        atomic_write_json(reports / "errors.json", errors, sort_keys=True)
        plot_errors(errors, reports / "errors.png")
        write_per_class_csv(reports / "per_class_ap.csv", coco, voc, names)
        atomic_write_csv(reports / "pr_curves.csv", pr_curves_table(voc, names))
        plot_pr_curves(voc, names, reports / "pr_curves.png")
        plot_detection_grid([(img * 255).byte().permute(1, 2, 0).numpy() for img, _, _ in preview],
                            [{k: v.numpy() for k, v in d.items()} for _, _, d in preview],
                            [{"boxes": t["boxes"].numpy(), "labels": t["labels"].numpy()}
                             for _, t, _ in preview], names, reports / "detections.png")
    tracker = start_stage_run(project, cfg, "evaluate", run_id=state.get("mlflow_run_id") or None)
    with tracker:
        tracker.log_metrics({k: float(v) for k, v in metrics.items() if not math.isnan(v)})
        tracker.log_metrics({f"ap50.{n}": float(coco["per_class_ap50"][n]) for n in names})
        tracker.log_metrics({f"errors.{k}": float(v) for k, v in errors["delta_ap50"].items()})
        tracker.log_metrics({f"errors.count.{k}": float(v) for k, v in errors["counts"].items()})
        tracker.log_dataset(test_json, context="eval")
        for name in ("metrics.json", "errors.json", "per_class_ap.csv", "pr_curves.png",
                     "errors.png", "detections.png"):
            tracker.log_artifact(reports / name)
    print(json.dumps(metrics, indent=2), file=sys.stderr)
    return metrics


def command(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
            checkpoint: Annotated[Path, typer.Option(help="checkpoint to evaluate")] = Path("models/model.pt"),
            test: Annotated[Path, typer.Option(help="test split (COCO JSON)")] = Path("data/processed/test.json"),
            reports: Annotated[Path, typer.Option(help="output folder")] = Path("reports"),
            detections: Annotated[Path, typer.Option(help="detections (COCO results)")] = Path("data/detections/test.json"),
            ) -> None:
    """Detect on the test split; mAP (pycocotools) and VOC07/VOC2010 AP into reports/."""
    cfg = load(params, set_)
    with user_errors(ValueError):
        run(cfg, test_json=test, checkpoint=checkpoint, reports=reports, detections=detections)


if __name__ == "__main__":
    stage_main(command)

"""`frcnn explain` and the `explain` stage: one image's journey through a trained detector, one
figure per stage (`frcnn.plots.explain`), counts in the titles and in `index.md`.

    frcnn explain photo.jpg                                # no GT: anchors, objectness, proposals, detections
    frcnn explain photo.jpg --gt photo.xml                 # + anchor labels, sampled RoIs, recall
    frcnn explain --gt data/processed/test.json --pick 0   # an image of a COCO split, with its GT

What is drawn was captured from the model's own forward passes (`frcnn.analysis.trace`). The
stage draws a fixed test image of every trained model and logs the figures to the train run's
MLflow run, so each experiment shows its own. It depends on the checkpoint alone, so it reruns
whenever the model does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

from frcnn.analysis.trace import trace
from frcnn.config import Config
from frcnn.data.dataset import DetectionDataset
from frcnn.data.voc import parse_voc_xml
from frcnn.engine.checkpoint import load_checkpoint
from frcnn.engine.inference import load_detector, read_image
from frcnn.errors import DataError
from frcnn.fileio import atomic_write_json, check_writable
from frcnn.ops.anchors import anchor_scales_px
from frcnn.pipeline.command import ParamsOpt, SetOpt, load, stage_main, user_errors
from frcnn.pipeline.tracking import start_stage_run
from frcnn.plots.explain import FIGURES, write_explain


def gt_from_voc(xml: Path, class_names: list[str]) -> dict[str, torch.Tensor]:
    """A VOC annotation -> {"boxes" (G, 4) xyxy 0-based, "labels" (G,)}; difficult objects left
    out as in training. A class the checkpoint does not know is an error naming it."""
    from frcnn.data.voc import voc_to_xyxy

    ann = parse_voc_xml(xml)
    boxes, labels = [], []
    for obj in ann.objects:
        if obj.difficult:
            continue
        if obj.name not in class_names:
            raise DataError(f"{xml}: class {obj.name!r} is not one of the checkpoint's "
                            f"{class_names}")
        boxes.append(voc_to_xyxy(obj.bndbox))
        labels.append(class_names.index(obj.name) + 1)
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def pick_from_split(split: Path, image: Path | None, pick: int, class_names: list[str]
                    ) -> tuple[Path, torch.Tensor, dict[str, torch.Tensor]]:
    """(path, image, GT) of a COCO split's image: the one named `image` (by file name), else the
    `pick`-th."""
    dataset = DetectionDataset(split, train=False, include_difficult=False)
    if list(dataset.class_names) != class_names:
        raise DataError(f"{split}: classes {list(dataset.class_names)} differ from the "
                        f"checkpoint's {class_names}")
    if image is not None:
        names = [Path(im["path"]).name for im in dataset.images]
        if image.name not in names:
            raise DataError(f"{split}: has no image named {image.name}")
        pick = names.index(image.name)
    if not 0 <= pick < len(dataset):
        raise DataError(f"{split}: --pick {pick} is outside its {len(dataset)} images")
    pixels, target = dataset[pick]
    return Path(dataset.images[pick]["path"]), pixels, {"boxes": target["boxes"],
                                                        "labels": target["labels"]}


def run(cfg: Config, *, checkpoint: Path, out: Path, image: Path | None = None,
        gt: Path | None = None, pick: int = 0, conf: float = 0.5, log: bool = False,
        project: Path = Path(".")) -> dict[str, Any]:
    """Trace one image through the checkpoint's detector and write the figures + index to `out`."""
    if image is None and (gt is None or gt.suffix.lower() != ".json"):
        raise DataError("explain: give an IMAGE, or --gt a COCO split (.json) to pick one from")
    check_writable(out / "index.md", need_bytes=2**22)
    model, names = load_detector(checkpoint, inference=cfg)
    target = None
    if gt is not None and gt.suffix.lower() == ".json":
        path, pixels, target = pick_from_split(gt, image, pick, names)
    else:
        assert image is not None
        path, pixels = image, read_image(image)
        if gt is not None:
            target = gt_from_voc(gt, names)
    try:
        tr = trace(model, pixels, target, seed=cfg.seed)
    except ValueError as exc:  # the model's own input checks (a degenerate GT box ...)
        raise DataError(f"{gt or path}: {exc}") from None
    state = load_checkpoint(checkpoint)
    trained = state["config"]
    scales = anchor_scales_px(tuple(trained["anchors"]["scales"]), trained["anchors"]["unit"],
                              tr.stride)
    shapes = [f"{s:g}px h/w {r:g}" for r in trained["anchors"]["ratios"] for s in scales]
    rgb = (pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    for stale in FIGURES:  # an earlier run's figure this one may not draw (no GT: no labels)
        (out / stale).unlink(missing_ok=True)
    counts = write_explain(tr, rgb, out, names, shapes, title=f"explain: {path.name}", conf=conf)
    atomic_write_json(out / "counts.json", {"image": str(path), **counts}, sort_keys=True)
    if log:
        with start_stage_run(project, cfg, "explain", run_id=state.get("mlflow_run_id") or None) as t:
            for f in [p for p in (out / n for n in FIGURES) if p.exists()] + [
                    out / "index.md", out / "counts.json"]:
                t.log_artifact(f, artifact_path="explain")
    print(json.dumps(counts, indent=2), file=sys.stderr)
    return counts


def command(image: Annotated[Path | None, typer.Argument(help="image file (omit with --gt SPLIT.json)")] = None,
            checkpoint: Annotated[Path, typer.Option(help="trained checkpoint")] = Path("models/model.pt"),
            gt: Annotated[Path | None, typer.Option(help="GT: a VOC .xml for IMAGE, or a COCO split .json")] = None,
            pick: Annotated[int, typer.Option(help="with --gt SPLIT.json and no IMAGE: its N-th image")] = 0,
            out: Annotated[Path, typer.Option(help="output folder")] = Path("reports/explain"),
            conf: Annotated[float, typer.Option(help="minimum score of the drawn detections")] = 0.5,
            log: Annotated[bool, typer.Option(help="log the figures to the checkpoint's MLflow run")] = False,
            params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """One image through the detector, one figure per stage: anchors, anchor labels, objectness,
    proposals before/after NMS, sampled RoIs, detections (PNGs + index.md in --out)."""
    with user_errors(ValueError):
        if params.is_file():
            cfg = load(params, set_)
        else:  # outside a project: the checkpoint's own settings, plus --set
            from frcnn.config import config_from_dict
            from frcnn.pipeline.command import parse_overrides
            cfg = config_from_dict(load_checkpoint(checkpoint).get("config", {}),
                                   parse_overrides(set_))
        run(cfg, checkpoint=checkpoint, out=out, image=image, gt=gt, pick=pick, conf=conf, log=log)
    typer.echo(f"explain -> {out}/index.md")


if __name__ == "__main__":
    stage_main(command)

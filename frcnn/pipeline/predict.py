"""`frcnn predict`: detections on image files, as JSON and drawn PNGs."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import torch
import typer

from frcnn.engine.inference import (
    detections_to_json,
    iter_image_files,
    load_detector,
    read_image,
)
from frcnn.fileio import atomic_savefig, atomic_write_text
from frcnn.model.faster_rcnn import FasterRCNN
from frcnn.pipeline.command import user_errors
from frcnn.plots.draw import draw_boxes, plt, show_image


@torch.inference_mode()
def predict_files(model: FasterRCNN, class_names: list[str], paths: Iterable[Path], out_dir: Path,
                  conf: float = 0.5) -> tuple[list[Path], list[str]]:
    """Detect on every image file; returns (JSON files written, one error line per skipped file)."""

    out_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    written, errors = [], []
    used: set[str] = set()
    for path in iter_image_files(paths):
        try:
            image = read_image(path)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        det = model([image.to(device)])[0]
        keep = det["scores"] >= conf
        det = {k: v[keep].cpu() for k, v in det.items()}
        record = detections_to_json(path, image, det, class_names)
        # a.jpg and a.png, or x/001.jpg and y/001.jpg, must not overwrite each other's outputs
        stem, n = path.stem, 2
        while stem in used:
            stem, n = f"{path.stem}-{n}", n + 1
        used.add(stem)
        json_path = out_dir / f"{stem}.json"
        atomic_write_text(json_path, json.dumps(record, indent=2) + "\n")
        fig, ax = plt.subplots(figsize=(6, 6 * image.shape[1] / image.shape[2]))
        show_image(ax, image.permute(1, 2, 0).numpy(), title=path.name)
        draw_boxes(ax, det["boxes"].numpy(), det["labels"].tolist(), class_names,
                   scores=det["scores"].tolist())
        atomic_savefig(fig, out_dir / f"{stem}.png")
        plt.close(fig)
        written.append(json_path)
    return written, errors


def command(paths: Annotated[list[Path], typer.Argument(help="image files or folders")],
            checkpoint: Annotated[Path, typer.Option(help="trained checkpoint")] = Path("models/model.pt"),
            conf: Annotated[float, typer.Option(help="minimum score to keep")] = 0.5,
            out: Annotated[Path, typer.Option(help="output folder")] = Path("predictions")) -> None:
    """Detect objects in images: a JSON of detections and a drawn PNG per image."""
    with user_errors():
        model, names = load_detector(checkpoint)
    written, errors = predict_files(model, names, paths, out, conf=conf)
    for line in errors:
        typer.echo(f"skipped: {line}", err=True)
    typer.echo(f"{len(written)} image(s) -> {out}/ ({len(errors)} skipped)")
    if not written and errors:
        raise typer.Exit(code=1)

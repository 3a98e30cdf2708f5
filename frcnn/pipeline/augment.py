"""The `augment` stage: data/processed/trainval.json -> data/augmented/ (+ its preview).

Each trainval image is kept where it is (referenced by a relative path) and `augment.copies`
augmented variants are written beside the JSON (`frcnn.data.augment`); the folder is built in a
staging folder and swapped in whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import albumentations as A
import typer

from frcnn.config import Config
from frcnn.data.augment import augmented_copies, build_pipeline
from frcnn.errors import DataError
from frcnn.fileio import atomic_write_json, check_writable, staged_dir, transaction
from frcnn.pipeline.command import ParamsOpt, SetOpt, load, stage_main, user_errors
from frcnn.plots.data import plot_augment_preview
from frcnn.progress import progress_bar


def run(cfg: Config, *, processed_dir: Path, out_dir: Path, preview_png: Path,
        progress: bool = True) -> dict[str, Any]:
    """Write the augmented training set to `out_dir` and `preview_png`; returns counts."""
    processed_dir, out_dir = Path(processed_dir), Path(out_dir)
    src = processed_dir / "trainval.json"
    if not src.is_file():
        raise DataError(f"{src}: not found; run the preprocess stage (`frcnn preprocess`) first")
    coco = json.loads(src.read_text())
    pipeline = build_pipeline(cfg.augment)
    copies = cfg.augment.copies

    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []

    def add(entry: dict[str, Any], anns: list[dict[str, Any]]) -> int:
        image_id = len(images) + 1
        images.append({**entry, "id": image_id})
        for a in anns:
            annotations.append({**a, "id": len(annotations) + 1, "image_id": image_id})
        return image_id

    preview: list[tuple[int, list[int]]] = []  # (original id, copy ids) for the preview
    source_bytes = sum((processed_dir / im["file_name"]).stat().st_size for im in coco["images"])
    check_writable(out_dir, preview_png, need_bytes=int(1.5 * copies * source_bytes) + 2**20)
    with transaction(), staged_dir(out_dir) as staging:
        (staging / "images").mkdir()
        bar = progress_bar(coco["images"], enabled=progress, desc="augment", unit="img")
        for index, im in enumerate(bar):
            path = processed_dir / im["file_name"]
            anns = by_image.get(im["id"], [])
            # The original, referenced where it is (relative paths are from the JSON's folder).
            rel = os.path.relpath(path, out_dir).replace(os.sep, "/")
            orig_id = add({**im, "file_name": rel, "augmented_from": None}, anns)
            if copies == 0:
                continue
            copy_ids = [add(entry, new_anns) for entry, new_anns in augmented_copies(
                pipeline, path, anns, index, copies, cfg.augment.seed, im, orig_id,
                staging / "images")]
            if len(preview) < 4:
                preview.append((orig_id, copy_ids))
        out = {**coco, "images": images, "annotations": annotations,
               "info": {**coco.get("info", {}),
                        "augmented": f"{copies} copies per image, seed {cfg.augment.seed}"}}
        atomic_write_json(staging / "trainval.json", out, indent=None)
        atomic_write_json(staging / "pipeline.json",
                          {**A.to_dict(pipeline), "seed": cfg.augment.seed, "copies": copies})
        # drawn from the staged copy: the folder and the preview land together or not at all
        plot_augment_preview(staging / "trainval.json", preview, Path(preview_png))
    summary = {"images": len(images), "originals": len(coco["images"]),
               "copies": len(images) - len(coco["images"]), "objects": len(annotations)}
    print(f"augment: {summary['originals']} originals + {summary['copies']} copies, "
          f"{summary['objects']} objects -> {out_dir / 'trainval.json'}")
    return summary


def command(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
            processed: Annotated[Path, typer.Option(help="preprocess's output folder")] = Path("data/processed"),
            out: Annotated[Path, typer.Option(help="output folder")] = Path("data/augmented"),
            preview: Annotated[Path, typer.Option(help="preview PNG")] = Path("reports/augment_preview.png"),
            ) -> None:
    """Materialise augmented training copies (data/augmented/) and reports/augment_preview.png."""
    cfg = load(params, set_)
    with user_errors():
        run(cfg, processed_dir=processed, out_dir=out, preview_png=preview)


if __name__ == "__main__":
    stage_main(command)

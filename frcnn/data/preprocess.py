"""The preprocess stage: `data/raw/` (VOC layout + manifest) -> COCO JSON per split + a data report.

Writes `data/processed/{trainval,test}.json` (the COCO contract in `frcnn.data`), and
`reports/data_summary.json`, `reports/data_summary.png` (objects per class, box sizes) and
`reports/data_preview.png` (training images with their GT boxes; difficult ones dashed).

Bad input is handled and reported, never silent (every case is in the summary's `issues` with the
file name, and in its counts):
- box partly outside the image (JPEG size) -> clipped (`boxes_clipped`);
- xmax < xmin, ymax < ymin, or nothing left after clipping -> dropped (`boxes_dropped`);
- class not in the class list -> `data.unknown_class: error` stops with the file and class named,
  `drop` drops the object (`objects_dropped_unknown_class`);
- malformed/unsafe XML (a box coordinate, `<size>` or flag that is not a finite number, such as
  `nan`, `inf` or `1e999`, included), missing or unreadable/truncated JPEG -> the image is skipped
  (`images_skipped`; `images_listed` vs `images` per split shows the change);
- an image (or annotation) path that resolves outside the VOC root's JPEGImages/ (Annotations/)
  folder, however spelled (an absolute `<filename>`, `..`, a symlink pointing out) -> the image is
  skipped (`images_skipped`), the resolved path named: nothing outside the dataset is read;
- XML `<size>` different from the JPEG's as displayed (EXIF orientation applied, as everywhere
  images are read) -> the JPEG's size is used (`size_mismatches`, saying when a rotation explains it).
The class list: `data.classes` if set, else VOC's 20 classes for voc2007/voc0712, else the sorted
names found in all annotation files.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from frcnn.config import DataConfig
from frcnn.data.image_io import displayed_size, orientation
from frcnn.data.voc import (
    VOC_CLASSES,
    AnnotationError,
    VocAnnotation,
    parse_voc_xml,
    voc_to_xyxy,
)
from frcnn.errors import DataError
from frcnn.progress import progress_bar

SPLITS = ("trainval", "test")


@dataclass
class Report:
    """Counts and issues gathered while converting; becomes reports/data_summary.json."""

    issues: list[dict[str, str]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)

    def add(self, kind: str, file: Path | str, split: str, problem: str) -> None:
        self.counts[kind] += 1
        self.issues.append({"file": str(file), "split": split, "kind": kind, "problem": problem})


def load_manifest(raw_dir: Path) -> dict[str, Any]:
    path = Path(raw_dir) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path}: not found; run the download stage (`frcnn download`) first")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def read_ids(path: Path) -> list[str]:
    """Image ids of a VOC ImageSets list (first column; per-class lists have a second)."""
    try:
        return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise DataError(f"{path}: cannot read split list ({exc.strerror or exc})") from None


def image_size(path: Path) -> tuple[int, int, int]:
    """(width, height) of an image as displayed (EXIF orientation applied) and that orientation,
    after decoding it fully: a truncated JPEG raises OSError."""
    with Image.open(path) as im:
        w, h = im.size
        exif = orientation(im)
        # Decode at reduced scale (JPEG DCT scaling): a fraction of the cost, and a cut-off
        # file still runs out of data and raises.
        im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
        im.load()
    return (*displayed_size((w, h), exif), exif)


def _image_path(root_dir: Path, image_id: str, ann: VocAnnotation) -> tuple[Path, str]:
    """The image file of an annotation, and how it was spelled (`<id>.jpg` or `<filename>`)."""
    path = root_dir / "JPEGImages" / f"{image_id}.jpg"
    if not path.exists() and ann.filename:  # labelImg: file name need not match the XML's
        alt = root_dir / "JPEGImages" / ann.filename
        if alt.exists():
            return alt, ann.filename
    return path, f"{image_id}.jpg"


def _outside(path: Path, folder: Path) -> Path | None:
    """Where `path` really is (symlinks and `..` resolved; an absolute `path` stays absolute) if
    that is not inside `folder` (resolved too), else None."""
    real = path.resolve()
    return None if real.is_relative_to(folder.resolve()) else real


def _shown(path: Path, raw_dir: Path) -> str:
    return os.path.relpath(path, raw_dir)


def _rotation_note(exif: int, width: int, height: int, ann: VocAnnotation) -> str:
    """For an EXIF-rotated image, how its displayed and stored sizes relate to the XML's."""
    if exif == 1:
        return ""
    stored = displayed_size((width, height), exif)  # swapping back: the transposition inverts itself
    hint = ("which the XML matches: were the boxes drawn on the unrotated image?"
            if stored == (ann.width, ann.height) else "which the XML does not match either")
    return f" as displayed (EXIF orientation {exif}; stored {stored[0]}x{stored[1]}, {hint})"


def _checked_image(raw_dir: Path, root: str, image_id: str, ann: VocAnnotation, rel_xml: str,
                   split: str, report: Report) -> tuple[Path, int, int, int] | None:
    """(image file, displayed width, height, EXIF orientation) of an annotation, or None
    (reported) when its image lies outside `<root>/JPEGImages`, is missing or cannot be decoded."""
    jpg, spelling = _image_path(raw_dir / root, image_id, ann)
    real = _outside(jpg, raw_dir / root / "JPEGImages")
    if real is not None:
        report.add("images_skipped", rel_xml, split, f"image {spelling!r} resolves to {real}, "
                   f"outside {root}/JPEGImages; skipped")
        return None
    try:
        width, height, exif = image_size(jpg)
    except FileNotFoundError:
        report.add("images_skipped", _shown(jpg, raw_dir), split, "image file missing")
        return None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        report.add("images_skipped", _shown(jpg, raw_dir), split,
                   f"unreadable or truncated image ({exc})")
        return None
    return jpg, width, height, exif


def _convert_objects(ann: VocAnnotation, width: int, height: int, classes: dict[str, int],
                     unknown: str, rel_xml: str, split: str, report: Report
                     ) -> list[tuple[int, tuple[float, float, float, float], bool, bool]]:
    """(category id, 0-based xyxy box, difficult, truncated) per kept object."""
    out = []
    for i, obj in enumerate(ann.objects):
        what = f"object {i} ({obj.name})"
        if obj.name not in classes:
            if unknown == "error":
                raise DataError(f"{ann.path}: {what}: unknown class {obj.name!r} (known: "
                                f"{', '.join(classes)}); set data.unknown_class: drop to skip it")
            report.add("objects_dropped_unknown_class", rel_xml, split,
                       f"{what}: unknown class, dropped")
            continue
        x1, y1, x2, y2 = voc_to_xyxy(obj.bndbox)
        if x2 <= x1 or y2 <= y1:
            report.add("boxes_dropped", rel_xml, split,
                       f"{what}: empty box {obj.bndbox} (max < min), dropped")
            continue
        c = (min(max(x1, 0.0), width), min(max(y1, 0.0), height),
             min(max(x2, 0.0), width), min(max(y2, 0.0), height))
        if c[2] <= c[0] or c[3] <= c[1]:
            report.add("boxes_dropped", rel_xml, split,
                       f"{what}: box {obj.bndbox} lies outside the {width}x{height} image, dropped")
            continue
        if c != (x1, y1, x2, y2):
            report.add("boxes_clipped", rel_xml, split,
                       f"{what}: box {obj.bndbox} exceeds the {width}x{height} image, clipped")
        out.append((classes[obj.name], c, obj.difficult, obj.truncated))
    return out


def _discover_classes(anns: list[VocAnnotation]) -> tuple[str, ...]:
    return tuple(sorted({o.name for a in anns for o in a.objects}))


def split_stats(rows: list, coco: dict[str, Any], class_names: tuple[str, ...]) -> dict[str, Any]:
    anns = coco["annotations"]
    with_objects = {a["image_id"] for a in anns}
    per_class = {n: {"objects": 0, "difficult": 0} for n in class_names}
    for a in anns:
        c = per_class[class_names[a["category_id"] - 1]]
        c["objects"] += 1
        c["difficult"] += a["difficult"]
    return {"images_listed": len(rows), "images": len(coco["images"]), "objects": len(anns),
            "difficult": sum(a["difficult"] for a in anns),
            "truncated": sum(a["truncated"] for a in anns),
            "images_without_objects": len(coco["images"]) - len(with_objects),
            "per_class": per_class}


# ---------------------------------------------------------------- plots


def parse_splits(raw_dir: Path, manifest: dict[str, Any], report: Report
                 ) -> dict[str, list[tuple[str, str, VocAnnotation | None]]]:
    """Pass 1: every listed annotation per split as (root, image id, parsed XML or None)."""
    parsed: dict[str, list[tuple[str, str, VocAnnotation | None]]] = {}
    for split in SPLITS:
        rows = []
        seen: set[tuple[str, str]] = set()
        for entry in manifest["splits"].get(split, []):
            root = entry["root"]
            for image_id in read_ids(raw_dir / entry["ids"]):
                if (root, image_id) in seen:
                    report.add("duplicates", f"{entry['ids']}", split,
                               f"image {image_id} listed twice; kept once")
                    continue
                seen.add((root, image_id))
                xml = raw_dir / root / "Annotations" / f"{image_id}.xml"
                real = _outside(xml, raw_dir / root / "Annotations")
                if real is not None:  # an id with `..`, or a symlink out of the dataset
                    report.add("images_skipped", entry["ids"], split, f"image {image_id}: "
                               f"annotation resolves to {real}, outside {root}/Annotations; skipped")
                    rows.append((root, image_id, None))
                    continue
                try:
                    rows.append((root, image_id, parse_voc_xml(xml)))
                except AnnotationError as exc:
                    report.add("images_skipped", xml.relative_to(raw_dir), split,
                               str(exc).removeprefix(f"{xml}: "))
                    rows.append((root, image_id, None))
        parsed[split] = rows
    return parsed


def class_names_for(data: DataConfig, manifest: dict[str, Any], raw_dir: Path,
                    parsed: dict[str, list[tuple[str, str, VocAnnotation | None]]]
                    ) -> tuple[str, ...]:
    """data.classes if given, VOC's 20 for VOC, else every class name found, sorted."""
    if data.classes is not None:
        return tuple(data.classes)
    if manifest.get("class_order") == "voc":
        return VOC_CLASSES
    class_names = _discover_classes([a for rows in parsed.values() for *_, a in rows if a])
    if not class_names:
        raise DataError(f"{raw_dir}: no objects in any annotation file, so no classes to learn")
    return class_names


def to_coco(split: str, rows: list[tuple[str, str, VocAnnotation | None]], raw_dir: Path,
            out_dir: Path, class_names: tuple[str, ...], unknown_class: str, dataset: str,
            report: Report, progress: bool) -> dict[str, Any]:
    """Pass 2 for one split: check each image, convert its boxes; the COCO dict (file names
    relative to `out_dir`, where the JSON will live)."""
    classes = {name: i + 1 for i, name in enumerate(class_names)}
    images, annotations = [], []
    bar = progress_bar(rows, enabled=progress, desc=f"preprocess {split}", unit="img")
    for root, image_id, ann in bar:
        if ann is None:
            continue  # reported in pass 1
        rel_xml = (Path(root) / "Annotations" / f"{image_id}.xml").as_posix()
        checked = _checked_image(raw_dir, root, image_id, ann, rel_xml, split, report)
        if checked is None:
            continue
        jpg, width, height, exif = checked
        if (ann.width, ann.height) != (width, height) and ann.width is not None:
            report.add("size_mismatches", rel_xml, split,
                       f"XML size {ann.width}x{ann.height} differs from the image's "
                       f"{width}x{height}{_rotation_note(exif, width, height, ann)}; "
                       "using the image's")
        objects = _convert_objects(ann, width, height, classes, unknown_class,
                                   rel_xml, split, report)
        image_index = len(images) + 1
        images.append({"id": image_index,
                       "file_name": os.path.relpath(jpg, out_dir).replace(os.sep, "/"),
                       "width": width, "height": height, "voc_id": image_id, "voc_root": root})
        for cat, (x1, y1, x2, y2), difficult, truncated in objects:
            w, h = x2 - x1, y2 - y1
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_index, "category_id": cat,
                "bbox": [round(x1, 2), round(y1, 2), round(w, 2), round(h, 2)],
                "area": round(w * h, 2), "iscrowd": int(difficult),  # pycocotools: ignore
                "difficult": int(difficult), "truncated": int(truncated)})
    return {
        "info": {"description": f"{dataset} {split}, converted by frcnn preprocess",
                 "bbox": "xywh, 0-based continuous pixels; iscrowd=1 marks VOC difficult"},
        "images": images, "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "none"}
                       for i, n in enumerate(class_names)]}


def summarise(dataset: str, class_names: tuple[str, ...], split_stats: dict[str, dict[str, Any]],
              report: Report) -> dict[str, Any]:
    """reports/data_summary.json's content."""
    return {
        "dataset": dataset, "num_classes": len(class_names), "classes": list(class_names),
        "splits": split_stats,
        "images": sum(s["images"] for s in split_stats.values()),
        "objects": sum(s["objects"] for s in split_stats.values()),
        "difficult": sum(s["difficult"] for s in split_stats.values()),
        "images_without_objects": sum(s["images_without_objects"] for s in split_stats.values()),
        **{k: report.counts.get(k, 0) for k in ("images_skipped", "boxes_clipped", "boxes_dropped",
                                                "objects_dropped_unknown_class", "size_mismatches",
                                                "duplicates")},
        "issues": report.issues,
    }

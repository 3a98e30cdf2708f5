"""The names `frcnn predict` writes (its module docstring has the rules), torch-free: shared by
the PyTorch predictor and the ONNX one (`frcnn.deploy.onnx_predict`), which must run without torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from frcnn.data.image_io import iter_image_files
from frcnn.fileio import atomic_savefig, atomic_write_json

FIGURE_KEY = "frcnn-predict-input"  # PNG text chunk: the resolved input a drawn figure shows


class Predicted(NamedTuple):
    written: list[Path]  # the JSON files written
    errors: list[str]  # one line per skipped (unreadable) input
    notes: list[str]  # one line per image whose outputs were renamed not to overwrite a file


def figure_input(path: Path) -> str | None:
    """The resolved input a PNG drawn by predict shows, or None for any other file."""
    if path.suffix.lower() != ".png":
        return None
    try:
        with Image.open(path) as im:
            value = im.info.get(FIGURE_KEY)
    except (OSError, ValueError, SyntaxError):  # not an image, unreadable, a folder ...
        return None
    return value if isinstance(value, str) else None


def _json_input(path: Path) -> str | None:
    """The resolved "image" of a JSON predict wrote, or None for any other file."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    image = record.get("image") if isinstance(record, dict) else None
    return str(Path(image).resolve()) if isinstance(image, str) else None


def input_files(paths: Iterable[Path]) -> list[Path]:
    """Files as given; folders expanded to their image files, minus the figures predict drew."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += [p for p in iter_image_files([path]) if figure_input(p) is None]
        else:
            out.append(path)
    return out


class OutputNames:
    """Chooses each image's output stem in `out_dir` by the rules in the module docstring."""

    def __init__(self, out_dir: Path, inputs: Iterable[Path]) -> None:
        self.out_dir = out_dir
        self.inputs = {p.resolve() for p in inputs}
        self.used: set[str] = set()

    def _blocker(self, stem: str, image: Path) -> str | None:
        """Why `stem` cannot be `image`'s ("" if written in this run), None if it can."""
        if stem in self.used:
            return ""
        owner = str(image.resolve())
        for suffix, belongs_to in ((".json", _json_input), (".png", figure_input)):
            path = self.out_dir / f"{stem}{suffix}"
            if path.resolve() in self.inputs:
                return f"{path} is an input"
            if (path.exists() or path.is_symlink()) and belongs_to(path) != owner:
                return f"{path} exists and is not predict's output for {image}"
        return None

    def stem(self, image: Path) -> tuple[str, str | None]:
        """(stem for `image`'s .json and .png, a note if a file made it rename them)."""
        stem, n, why = image.stem, 2, None
        while (blocker := self._blocker(stem, image)) is not None:
            why = why or blocker or None
            stem, n = f"{image.stem}-{n}", n + 1
        self.used.add(stem)
        if why is None:
            return stem, None
        return stem, (f"{why}, not overwritten: {image}'s detections go to "
                      f"{self.out_dir / stem}.json and .png")


def detections_to_json(path: Path, image: Any, det: dict[str, Any], class_names: list[str]
                       ) -> dict[str, Any]:
    """predict's JSON record; `image` (3, H, W) and `det` arrays: torch tensors or numpy."""
    return {"image": str(path), "height": int(image.shape[1]), "width": int(image.shape[2]),
            "detections": [{"label": int(lab), "class": class_names[int(lab) - 1],
                            "score": round(float(s), 4), "box": [round(float(v), 1) for v in b]}
                           for b, lab, s in zip(det["boxes"], det["labels"], det["scores"])]}


def draw_prediction(path: Path, image: np.ndarray, det: dict[str, np.ndarray],
                    class_names: list[str], png: Path) -> None:
    """`image` (3, H, W) in [0, 1] with its detections drawn -> `png`, which records (text chunk
    FIGURE_KEY) the input it shows."""
    from frcnn.plots.draw import draw_boxes, plt, show_image

    fig, ax = plt.subplots(figsize=(6, 6 * image.shape[1] / image.shape[2]))
    show_image(ax, image.transpose(1, 2, 0), title=path.name)
    draw_boxes(ax, det["boxes"], det["labels"].tolist(), class_names, scores=det["scores"].tolist())
    atomic_savefig(fig, png, close=True, metadata={FIGURE_KEY: str(path.resolve())})


def write_predictions(paths: Iterable[Path], out_dir: Path, read: Callable[[Path], Any],
                      detect: Callable[[Any], dict[str, np.ndarray]], class_names: list[str],
                      conf: float = 0.5) -> Predicted:
    """The loop of `frcnn predict`, whatever runs the model: per input image a JSON and a drawn
    PNG, named by `OutputNames`. `read(path)` -> (3, H, W) image (ValueError naming the file if
    unreadable: reported and skipped); `detect(image)` -> numpy {"boxes" (D, 4), "labels",
    "scores"}; detections under `conf` are dropped."""
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = input_files(paths)  # all of them before writing anything: none may be overwritten
    names = OutputNames(out_dir, inputs)
    result = Predicted([], [], [])
    for path in inputs:
        try:
            image = read(path)
        except ValueError as exc:
            result.errors.append(str(exc))
            continue
        det = detect(image)
        keep = det["scores"] >= conf
        det = {k: v[keep] for k, v in det.items()}
        stem, note = names.stem(path)
        if note is not None:
            result.notes.append(note)
        json_path = out_dir / f"{stem}.json"
        atomic_write_json(json_path, detections_to_json(path, image, det, class_names))
        draw_prediction(path, np.asarray(image), det, class_names, out_dir / f"{stem}.png")
        result.written.append(json_path)
    return result

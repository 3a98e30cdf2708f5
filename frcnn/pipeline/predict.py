"""`frcnn predict`: detections on image files, as JSON and drawn PNGs.

Per image, `<stem>.json` and `<stem>.png` go to the output folder. Nothing but predict's own
earlier output for the same image is ever overwritten:
- a name that is (after resolving symlinks and `..`) one of the input files, given or found in a
  folder, is never written: `predict photos/ --out photos/` leaves every photo as it was;
- an existing file is overwritten only if it is predict's output for the same input: a JSON whose
  "image" resolves to that input, or a PNG that predict drew for it (its `frcnn-predict-input`
  text chunk names the resolved input). A user's unrelated `x.png` survives;
- a name already written in this run (a.jpg and a.png, or x/001.jpg and y/001.jpg) is not reused.
A blocked name becomes `<stem>-2`, `-3` ... (the .json and .png always share one), and for an input
or a foreign file the command says so in one line on stderr. Rerunning a command reuses the same
names. Folders are expanded to their image files minus the figures predict drew (so rerunning
`predict d --out d` does not detect on its own drawings); files given by name are always used.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, NamedTuple

import torch
import typer
from PIL import Image

from frcnn.config import config_from_dict
from frcnn.engine.checkpoint import load_checkpoint
from frcnn.engine.inference import (
    detections_to_json,
    inference_precision,
    iter_image_files,
    load_detector,
    read_image,
)
from frcnn.fileio import atomic_savefig, atomic_write_json
from frcnn.model.faster_rcnn import FasterRCNN
from frcnn.pipeline.command import ParamsOpt, SetOpt, load, parse_overrides, user_errors
from frcnn.plots.draw import draw_boxes, plt, show_image

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


def _draw(path: Path, image: torch.Tensor, det: dict[str, torch.Tensor], class_names: list[str],
          png: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 6 * image.shape[1] / image.shape[2]))
    show_image(ax, image.permute(1, 2, 0).numpy(), title=path.name)
    draw_boxes(ax, det["boxes"].numpy(), det["labels"].tolist(), class_names,
               scores=det["scores"].tolist())
    atomic_savefig(fig, png, close=True, metadata={FIGURE_KEY: str(path.resolve())})


@torch.inference_mode()
def predict_files(model: FasterRCNN, class_names: list[str], paths: Iterable[Path], out_dir: Path,
                  conf: float = 0.5, *, amp: bool = False, channels_last: bool = False) -> Predicted:
    """Detect on every image file (folders expanded); output names as in the module docstring.
    `amp` / `channels_last`: `eval.amp` / `eval.channels_last` (`inference_precision`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    context = inference_precision(model, device, amp, channels_last)
    inputs = input_files(paths)  # all of them before writing anything: none may be overwritten
    names = OutputNames(out_dir, inputs)
    result = Predicted([], [], [])
    for path in inputs:
        try:
            image = read_image(path)
        except ValueError as exc:
            result.errors.append(str(exc))
            continue
        with context:
            det = model([image.to(device)])[0]
        keep = det["scores"] >= conf
        det = {k: (v.float() if v.is_floating_point() else v)[keep].cpu() for k, v in det.items()}
        stem, note = names.stem(path)
        if note is not None:
            result.notes.append(note)
        json_path = out_dir / f"{stem}.json"
        atomic_write_json(json_path, detections_to_json(path, image, det, class_names))
        _draw(path, image, det, class_names, out_dir / f"{stem}.png")
        result.written.append(json_path)
    return result


def command(paths: Annotated[list[Path], typer.Argument(help="image files or folders")],
            checkpoint: Annotated[Path, typer.Option(help="trained checkpoint")] = Path("models/model.pt"),
            conf: Annotated[float, typer.Option(help="minimum score to keep")] = 0.5,
            out: Annotated[Path, typer.Option(help="output folder")] = Path("predictions"),
            params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Detect objects in images: a JSON of detections and a drawn PNG per image. The model is the
    checkpoint's; the inference-only keys (rpn.*_test, roi.score_thresh/nms_thresh/
    detections_per_img, eval.amp, eval.channels_last) come from --params when that file exists,
    then from --set."""
    with user_errors():
        if params.is_file():
            inference = load(params, set_)
        else:  # outside a project: the checkpoint's own settings, plus --set
            inference = config_from_dict(load_checkpoint(checkpoint).get("config", {}),
                                         parse_overrides(set_))
        model, names = load_detector(checkpoint, inference=inference)
    written, errors, notes = predict_files(model, names, paths, out, conf=conf,
                                           amp=inference.eval.amp,
                                           channels_last=inference.eval.channels_last)
    for line in errors:
        typer.echo(f"skipped: {line}", err=True)
    for line in notes:
        typer.echo(f"renamed: {line}", err=True)
    typer.echo(f"{len(written)} image(s) -> {out}/ ({len(errors)} skipped)")
    if not written and errors:
        raise typer.Exit(code=1)

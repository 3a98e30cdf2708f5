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

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import torch
import typer

from frcnn.config import config_from_dict
from frcnn.engine.checkpoint import load_checkpoint
from frcnn.engine.inference import (
    inference_precision,
    load_detector,
    read_image,
)
from frcnn.fileio import atomic_savefig, atomic_write_json
from frcnn.model.faster_rcnn import FasterRCNN
from frcnn.pipeline.command import ParamsOpt, SetOpt, load, parse_overrides, user_errors
from frcnn.pipeline.outputs import (
    FIGURE_KEY,
    OutputNames,
    Predicted,
    detections_to_json,
    input_files,
)
from frcnn.plots.draw import draw_boxes, plt, show_image


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
            params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
            model: Annotated[Path | None, typer.Option(help="an exported model.onnx instead of the checkpoint (runs without torch)")] = None,
            ) -> None:
    """Detect objects in images: a JSON of detections and a drawn PNG per image. The model is the
    checkpoint's; the inference-only keys (rpn.*_test, roi.score_thresh/nms_thresh/
    detections_per_img, eval.amp, eval.channels_last) come from --params when that file exists,
    then from --set."""
    if model is not None:  # `frcnn` itself routes this before importing torch (frcnn.entry)
        from frcnn.deploy.onnx_predict import main as onnx_main

        raise typer.Exit(code=onnx_main([*map(str, paths), "--model", str(model), "--conf",
                                         str(conf), "--out", str(out)]))
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

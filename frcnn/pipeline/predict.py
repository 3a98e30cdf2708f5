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

from frcnn.config import Config, config_from_dict
from frcnn.engine.checkpoint import load_checkpoint
from frcnn.engine.inference import (
    inference_precision,
    load_detector,
    read_image,
)
from frcnn.model.faster_rcnn import FasterRCNN
from frcnn.pipeline.command import ParamsOpt, SetOpt, load, parse_overrides, user_errors
from frcnn.pipeline.outputs import Predicted, write_predictions


@torch.inference_mode()
def predict_files(model: FasterRCNN, class_names: list[str], paths: Iterable[Path], out_dir: Path,
                  conf: float = 0.5, *, amp: bool = False, channels_last: bool = False) -> Predicted:
    """Detect on every image file (folders expanded); output names as in the module docstring.
    `amp` / `channels_last`: `eval.amp` / `eval.channels_last` (`inference_precision`)."""
    device = next(model.parameters()).device
    context = inference_precision(model, device, amp, channels_last)

    def detect(image: torch.Tensor) -> dict:
        with context:
            det = model([image.to(device)])[0]
        return {k: (v.float() if v.is_floating_point() else v).cpu().numpy() for k, v in det.items()}

    return write_predictions(paths, out_dir, read_image, detect, class_names, conf)


def inference_config(params: Path, set_: list[str] | None, checkpoint: Path) -> Config:
    """Where the inference-only keys come from: `params` (with `set_`) when that file exists,
    else the checkpoint's own config plus `set_` (a model used outside its project)."""
    if params.is_file():
        return load(params, set_)
    return config_from_dict(load_checkpoint(checkpoint).get("config", {}), parse_overrides(set_))


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
        inference = inference_config(params, set_, checkpoint)
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

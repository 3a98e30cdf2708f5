"""`frcnn predict --model model.onnx`: the exported detector on image files with onnxruntime, and
no torch: this module and what it imports (numpy, PIL, matplotlib, onnxruntime) never load it.

Same outputs and the same never-overwrite rules as the PyTorch `frcnn predict`
(`frcnn.pipeline.outputs`): per image `<stem>.json` and a drawn `<stem>.png`. The class names
travel in the ONNX file's metadata (`frcnn export` writes them).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from frcnn.data.image_io import load_rgb
from frcnn.errors import UserError
from frcnn.pipeline.outputs import Predicted, write_predictions

METADATA_CLASSES = "frcnn.class_names"


class OnnxDetector:
    """An exported frcnn graph in an onnxruntime session: `(3, H, W)` float32 images -> detections."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        if not Path(path).is_file():
            raise UserError(f"{path}: ONNX model not found (make one with `frcnn export`)")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 -- onnxruntime raises its own untyped errors
            raise UserError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_CLASSES not in meta:
            raise UserError(f"{path}: no {METADATA_CLASSES} metadata (not written by frcnn export)")
        self.class_names: list[str] = json.loads(meta[METADATA_CLASSES])

    def __call__(self, images: np.ndarray) -> list[dict[str, np.ndarray]]:
        """images (N, 3, H, W) float32 in [0, 1], one size -> per image boxes, labels, scores."""
        boxes, scores, labels, counts = self.session.run(
            None, {"images": np.ascontiguousarray(images, dtype=np.float32)})
        return [{"boxes": boxes[i, :k], "labels": labels[i, :k], "scores": scores[i, :k]}
                for i, k in enumerate(counts.tolist())]


def read_image(path: Path) -> np.ndarray:
    """An image file -> (3, H, W) float32 in [0, 1] (EXIF orientation applied); ValueError names it."""
    try:
        rgb = np.asarray(load_rgb(path), dtype=np.float32) / 255.0
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable image ({exc})") from None
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def predict_files(detector: OnnxDetector, paths: Iterable[Path], out_dir: Path, conf: float = 0.5
                  ) -> Predicted:
    """`frcnn.pipeline.predict.predict_files` with the ONNX graph: one image at a time."""
    return write_predictions(paths, out_dir, read_image, lambda image: detector(image[None])[0],
                             detector.class_names, conf)


def main(argv: Sequence[str]) -> int:
    """`frcnn predict PATH... --model model.onnx [--conf] [--out]`, as the PyTorch command."""
    parser = argparse.ArgumentParser(prog="frcnn predict", description=(
        "Detect objects in images with an exported ONNX model (no torch needed)."))
    parser.add_argument("paths", nargs="+", type=Path, help="image files or folders")
    parser.add_argument("--model", type=Path, required=True, help="model.onnx from frcnn export")
    parser.add_argument("--conf", type=float, default=0.5, help="minimum score to keep")
    parser.add_argument("--out", type=Path, default=Path("predictions"), help="output folder")
    args = parser.parse_args(list(argv))
    try:
        detector = OnnxDetector(args.model)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    written, errors, notes = predict_files(detector, args.paths, args.out, conf=args.conf)
    for line in errors:
        print(f"skipped: {line}", file=sys.stderr)
    for line in notes:
        print(f"renamed: {line}", file=sys.stderr)
    print(f"{len(written)} image(s) -> {args.out}/ ({len(errors)} skipped)")
    return 1 if not written and errors else 0


def is_onnx_predict(argv: Sequence[str]) -> bool:
    """`predict ... --model X.onnx` (or --model=X.onnx): the torch-free path."""
    if not argv or argv[0] != "predict":
        return False
    args = list(argv)
    for i, a in enumerate(args):
        value: Any = None
        if a == "--model" and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith("--model="):
            value = a.split("=", 1)[1]
        if value is not None:
            return str(value).lower().endswith(".onnx")
    return False


__all__ = ["OnnxDetector", "is_onnx_predict", "main", "predict_files", "read_image"]

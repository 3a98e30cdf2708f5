"""A trained checkpoint as an MLflow model (pyfunc): images in, detections out.

Input: a DataFrame with one column `image`, each row an image file's bytes base64-encoded (PNG,
JPEG, ... anything `frcnn predict` reads; MLflow's JSON serving format cannot carry raw bytes).
Output: one row per detection, `image` (the input row), `label` (1..K), `class`, `score`, and the
box `x1, y1, x2, y2` in that image's pixels; the same boxes as `frcnn predict`, whose score floor
(`--conf`) is the pyfunc param `conf` (default 0: every detection the model returns).

    model = mlflow.pyfunc.load_model("models:/frcnn@candidate")
    detections = model.predict(images_frame(["photo.jpg"]))

The model's artifact is a weights-only copy of the checkpoint (no optimizer state), and the frcnn
package travels with it (`code_paths`), so it loads in any environment with torch and torchvision.
"""

from __future__ import annotations

import base64
import io
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

COLUMNS = ["image", "label", "class", "score", "x1", "y1", "x2", "y2"]


def images_frame(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Image files -> the model's input: column `image` of base64-encoded file bytes."""
    return pd.DataFrame({"image": [base64.b64encode(Path(p).read_bytes()).decode("ascii")
                                   for p in paths]})


def decode_image(b64: str, row: int) -> Any:
    """One input cell -> (3, H, W) float tensor in [0, 1] (EXIF orientation applied)."""
    import torch
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(base64.b64decode(b64, validate=True))) as im:
            rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.float32) / 255.0
    except (ValueError, OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"input row {row}: not a base64-encoded image ({exc})") from None
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


class DetectorModel(mlflow.pyfunc.PythonModel):
    """The pyfunc wrapper: `load_context` builds the detector from the `checkpoint` artifact."""

    def load_context(self, context: Any) -> None:
        from frcnn.engine.inference import load_detector

        self.model, self.class_names = load_detector(Path(context.artifacts["checkpoint"]))

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        import torch

        conf = float((params or {}).get("conf", 0.0))
        if "image" not in model_input.columns:
            raise ValueError(f"input: needs a column 'image', got {list(model_input.columns)}")
        rows: list[dict[str, Any]] = []
        with torch.inference_mode():
            for i, cell in enumerate(model_input["image"]):
                det = self.model([decode_image(cell, i)])[0]
                for box, label, score in zip(det["boxes"].tolist(), det["labels"].tolist(),
                                             det["scores"].tolist()):
                    if score >= conf:
                        rows.append({"image": i, "label": int(label),
                                     "class": self.class_names[int(label) - 1],
                                     "score": float(score), "x1": box[0], "y1": box[1],
                                     "x2": box[2], "y2": box[3]})
        out = pd.DataFrame(rows, columns=COLUMNS)
        return out.astype({"image": "int64", "label": "int64", "score": "float64", "x1": "float64",
                           "y1": "float64", "x2": "float64", "y2": "float64"})


def weights_only(checkpoint: Path, dst: Path) -> Path:
    """The checkpoint minus optimizer, scaler and history: what inference needs."""
    import torch

    from frcnn.engine.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)
    slim = {k: state[k] for k in ("model", "config", "num_classes", "class_names")}
    torch.save(slim, dst)
    return dst


def requirements() -> list[str]:
    """Pinned packages the pyfunc imports (frcnn itself travels as code)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("torch", "torchvision", "numpy", "pillow", "pandas", "pyyaml", "tqdm", "mlflow"):
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


def log_detector(checkpoint: Path, example_images: Sequence[Path], name: str = "model") -> Any:
    """Log `checkpoint` as a pyfunc model into the active MLflow run, with a signature and an input
    example (`example_images`, a few files). Returns MLflow's ModelInfo."""
    from mlflow.models import infer_signature

    import frcnn

    example = images_frame(example_images)
    with tempfile.TemporaryDirectory() as tmp:
        slim = weights_only(checkpoint, Path(tmp) / "model.pt")
        wrapper = DetectorModel()
        wrapper.load_context(type("Ctx", (), {"artifacts": {"checkpoint": str(slim)}})())
        signature = infer_signature(example, wrapper.predict(None, example), params={"conf": 0.0})
        return mlflow.pyfunc.log_model(
            name=name, python_model=DetectorModel(), artifacts={"checkpoint": str(slim)},
            signature=signature, input_example=example,
            code_paths=[str(Path(frcnn.__file__).parent)], pip_requirements=requirements())


__all__ = ["COLUMNS", "DetectorModel", "images_frame", "log_detector", "weights_only"]


def register(tracking_uri: str, run_id: str, name: str = "frcnn", alias: str | None = None
             ) -> tuple[str, str]:
    """Register the model that train logged in `run_id` as a new version of `name` (and point
    `alias` at it); returns (version, model URI). An error names the run when it has no model."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from frcnn.errors import ConfigError
    from frcnn.pipeline.tracking import MODEL_URI_TAG

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise ConfigError(f"run {run_id}: not found in {tracking_uri} ({exc.error_code})") from None
    source = run.data.tags.get(MODEL_URI_TAG)
    if not source:
        raise ConfigError(f"run {run_id}: has no logged model (trained with "
                          "tracking.log_model: false, or before models were logged)")
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Faster R-CNN detector (frcnn)")
    # MLflow 3: a logged model is `models:/<model_id>`; the version must name that id too
    model_id = source.rsplit("/", 1)[-1] if source.startswith("models:/") else None
    version = client.create_model_version(name, source, run_id=run_id, model_id=model_id,
                                          tags={"dataset": run.data.tags.get("dataset", "")})
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return str(version.version), f"models:/{name}/{version.version}"

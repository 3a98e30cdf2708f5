"""`frcnn <stage>`: one command per pipeline stage (the DVC stages call the same functions).

Every command reads `--params params.yaml`; `--set key=value` (repeatable) overrides one key
for this run only, e.g. `frcnn train --set loss.lambda=10 --set train.max_steps=50`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

from frcnn.config import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Faster R-CNN from first principles: pipeline stages and tools.")

ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="key=value override, repeatable")]


def parse_overrides(items: list[str] | None) -> dict[str, object]:
    """["loss.lambda=10", "anchors.scales=[32,64]"] -> {"loss.lambda": 10, ...} (YAML values)."""
    out: dict[str, object] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item}: expected key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2)


@app.command()
def train(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
          resume: Annotated[bool, typer.Option(help="continue from models/model.pt")] = False) -> None:
    """Train the detector (models/model.pt, reports/train/). Runs under torchrun too."""
    from frcnn.checkpoint import CheckpointError
    from frcnn.engine import NonFiniteLossError
    from frcnn.pipeline import run_train

    try:
        run_train(params, resume=resume, overrides=parse_overrides(set_))
    except (ConfigError, CheckpointError, NonFiniteLossError, ValueError) as exc:
        _fail(exc)


@app.command()
def evaluate(params: ParamsOpt = Path("params.yaml"),
             checkpoint: Annotated[Path, typer.Option(help="checkpoint to evaluate")] = Path("models/model.pt")
             ) -> None:
    """Detect on the test split; mAP (pycocotools) and VOC07/VOC2010 AP into reports/."""
    from frcnn.checkpoint import CheckpointError
    from frcnn.pipeline import run_evaluate

    try:
        run_evaluate(params, checkpoint=checkpoint)
    except (ConfigError, CheckpointError, ValueError) as exc:
        _fail(exc)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

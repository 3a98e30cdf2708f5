"""The `pretrain` stage: data/processed/trainval.json -> models/backbone.pt, reports/pretrain.json.

The trunk first learns to classify trainval object crops (`frcnn.engine.pretrain`). With
`pretrain.steps: 0` nothing is trained: the file records that, and the detector starts from
random (or, with model.pretrained, ImageNet) weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from frcnn.config import Config
from frcnn.engine.checkpoint import save_checkpoint
from frcnn.engine.pretrain import pretrain_backbone, pretrain_key
from frcnn.fileio import atomic_write_json, check_writable
from frcnn.pipeline.command import ParamsOpt, SetOpt, load, stage_main, user_errors


def run(cfg: Config, *, trainval_json: Path, backbone: Path, summary_json: Path,
        progress: bool = True) -> dict[str, Any]:
    """Pretrain the backbone on `trainval_json`'s object crops -> `backbone`, `summary_json`."""
    check_writable(backbone, summary_json, need_bytes=2**26 if cfg.pretrain.steps else 0)
    weights, summary = None, {"steps": 0}
    if cfg.pretrain.steps:
        weights, summary = pretrain_backbone(cfg, trainval_json, progress=progress)
        print(f"pretrain: held-out crop accuracy {summary['heldout_accuracy']:.3f} "
              f"(chance {summary['chance_accuracy']:.3f}) after {summary['steps']} steps, "
              f"{summary['seconds']} s")
    save_checkpoint(backbone, {"backbone": weights, "made_with": pretrain_key(cfg),
                               "summary": summary})
    atomic_write_json(summary_json, summary, sort_keys=True)
    return summary


def command(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
            data: Annotated[Path, typer.Option(help="trainval split (COCO JSON)")] = Path("data/processed/trainval.json"),
            backbone: Annotated[Path, typer.Option(help="weights to write")] = Path("models/backbone.pt"),
            summary: Annotated[Path, typer.Option(help="summary JSON (DVC metrics)")] = Path("reports/pretrain.json"),
            ) -> None:
    """Pretrain the backbone on trainval object crops (models/backbone.pt, reports/pretrain.json)."""
    cfg = load(params, set_)
    with user_errors():
        run(cfg, trainval_json=data, backbone=backbone, summary_json=summary)


if __name__ == "__main__":
    stage_main(command)

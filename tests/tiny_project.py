"""A tiny frcnn project in a folder: params.yaml for a model that trains in a fraction of a second
per step, and the synth data (download -> preprocess -> augment) it trains on. Shared by
test_pipeline.py, test_cli.py and test_inference.py; each builds one per module."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def tiny_params() -> dict[str, Any]:
    """params.yaml of the repo, shrunk: 6 + 3 images of 64 px, 2 classes' worth of model width."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["synth"].update(num_trainval=6, num_test=3, image_size=64, seed=1)
    params["augment"].update(copies=0)
    params["model"].update(min_size=64, max_size=64)
    params["anchors"]["scales"] = [16, 32]
    params["rpn"].update(hidden_channels=16, batch_size_per_image=64, pre_nms_top_n_train=200,
                         post_nms_top_n_train=50, pre_nms_top_n_test=200, post_nms_top_n_test=30)
    params["roi"].update(hidden_dim=16, batch_size_per_image=32, detections_per_img=20,
                         score_thresh=0.0)
    params["train"].update(batch_size=2, max_steps=2, warmup_steps=0, lr=0.005, num_workers=0,
                           log_every=1, checkpoint_every=100, device="cpu", amp=False)
    params["eval"].update(batch_size=3, num_preview=2)
    params["pretrain"].update(steps=0)  # test_pretrain.py covers it
    params["tracking"].update(log_model=False)  # seconds per train stage; tests/deploy covers it
    return params


def stage_paths(stage: str, root: Path) -> dict[str, Any]:
    """The path arguments of `frcnn.pipeline.<stage>.run` in the pipeline's layout under `root`
    (the ones dvc.yaml passes, relative to the project)."""
    data, models, reports = root / "data", root / "models", root / "reports"
    return {
        "download": dict(raw_dir=data / "raw", cache_dir=data / "cache"),
        "preprocess": dict(raw_dir=data / "raw", out_dir=data / "processed",
                           summary_json=reports / "data_summary.json",
                           summary_png=reports / "data_summary.png",
                           preview_png=reports / "data_preview.png"),
        "augment": dict(processed_dir=data / "processed", out_dir=data / "augmented",
                        preview_png=reports / "augment_preview.png"),
        "pretrain": dict(trainval_json=data / "processed" / "trainval.json",
                         backbone=models / "backbone.pt", summary_json=reports / "pretrain.json"),
        "train": dict(train_json=data / "augmented" / "trainval.json",
                      backbone=models / "backbone.pt", checkpoint=models / "model.pt",
                      reports=reports / "train", project=root),
        "evaluate": dict(test_json=data / "processed" / "test.json", checkpoint=models / "model.pt",
                         reports=reports, detections=data / "detections" / "test.json",
                         project=root),
        "explain": dict(checkpoint=models / "model.pt", gt=data / "processed" / "test.json",
                        out=reports / "explain", log=True, project=root),
        "report": dict(metrics_json=reports / "metrics.json",
                       per_class_csv=reports / "per_class_ap.csv",
                       train_summary_json=reports / "train" / "summary.json",
                       out=reports / "report.md"),
    }[stage]


def run_stage(stage: str, root: Path, overrides: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """`frcnn.pipeline.<stage>.run` on the project in `root` (its params.yaml and layout)."""
    import importlib

    from frcnn.config import load_config

    cfg = load_config(root / "params.yaml", overrides)
    module = importlib.import_module(f"frcnn.pipeline.{stage}")
    return module.run(cfg, **{**stage_paths(stage, root), **kwargs})


def build_project(root: Path, params: dict[str, Any] | None = None) -> Path:
    """Write params.yaml into `root` and run download, preprocess and augment there."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params or tiny_params()))
    for stage in ("download", "preprocess", "augment"):
        run_stage(stage, root, progress=False)
    return root


def copy_project(src: Path, dst: Path) -> Path:
    """A fresh project sharing `src`'s data (symlinked) and params, with nothing trained yet."""
    dst.mkdir(parents=True)
    shutil.copy(src / "params.yaml", dst / "params.yaml")
    os.symlink(src / "data", dst / "data")
    return dst


def set_params(root: Path, **sections: dict[str, Any]) -> None:
    """Update sections of `root/params.yaml`, e.g. set_params(p, train={"max_steps": 3})."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    for name, values in sections.items():
        params[name].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params))

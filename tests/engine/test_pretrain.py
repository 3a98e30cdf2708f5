"""frcnn.pretrain and the pretrain stage: crops, a trunk that learns, and weights the detector uses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from frcnn.config import ConfigError, config_from_dict, load_config
from frcnn.engine.pretrain import HOLDOUT_EVERY, load_pretrained_backbone, object_crops
from frcnn.errors import CheckpointError
from frcnn.model.build import build_model
from tests.tiny_project import build_project, run_stage, tiny_params

BACKBONE = Path("models/backbone.pt")


def _params(steps: int) -> dict:
    params = tiny_params()
    # few, big, plain objects: a set a trunk can memorise in a few dozen steps
    params["data"]["synth"].update(num_trainval=24, image_size=96, min_object_size=30,
                                   max_objects=2, distractors=0, patterned_fill=0.0,
                                   textured_background=0.0)
    params["pretrain"].update(steps=steps, batch_size=16, crop_size=32, lr=0.002)
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_project(tmp_path_factory.mktemp("pretrain"), _params(steps=60))


def test_crops_are_the_non_difficult_trainval_objects(project: Path) -> None:
    gt = json.loads((project / "data/processed/trainval.json").read_text())
    wanted = [a for a in gt["annotations"] if not a["difficult"]]
    crops = object_crops(project / "data/processed/trainval.json", crop_size=40, context=0.1)
    assert crops.pixels.shape == (len(wanted), 3, 40, 40) and crops.pixels.dtype == torch.uint8
    assert sorted(crops.labels.tolist()) == sorted(a["category_id"] - 1 for a in wanted)
    assert crops.class_names == tuple(c["name"] for c in gt["categories"])
    # held out: every HOLDOUT_EVERY-th image with objects is not trained on, and not none of them
    assert 0 < int(crops.holdout.sum()) < len(wanted)
    images_with = sorted({a["image_id"] for a in gt["annotations"]})
    held_images = [i for k, i in enumerate(sorted(im["id"] for im in gt["images"]))
                   if k % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 and i in images_with]
    assert int(crops.holdout.sum()) == sum(a["image_id"] in held_images for a in wanted)


def test_pretrain_learns_and_the_detector_starts_from_its_weights(project: Path) -> None:
    summary = run_stage("pretrain", project, progress=False)
    assert summary["steps"] == 60 and summary["crops"] > 0
    # a memorisable set: the training loss falls far below chance's ln(K)
    assert summary["final_loss"] < 0.5 * math.log(1 / summary["chance_accuracy"])
    assert json.loads((project / "reports/pretrain.json").read_text()) == summary

    cfg = load_config(project / "params.yaml")
    model = build_model(cfg, num_classes=len(json.loads(
        (project / "data/processed/trainval.json").read_text())["categories"]))
    fresh = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    assert load_pretrained_backbone(model, project / BACKBONE, cfg) == summary
    saved = torch.load(project / BACKBONE, weights_only=True)["backbone"]
    for k, v in model.backbone.state_dict().items():
        torch.testing.assert_close(v, saved[k])
    assert any(not torch.equal(fresh[k], saved[k]) for k in fresh)  # they are not the init weights


def test_stale_or_missing_backbone_file_is_refused_naming_it(project: Path, tmp_path: Path) -> None:
    cfg = load_config(project / "params.yaml", {"pretrain.lr": 0.01})
    model = build_model(cfg, num_classes=6)
    if not (project / BACKBONE).exists():
        run_stage("pretrain", project, progress=False)
    with pytest.raises(CheckpointError, match=r"backbone.pt: made with other settings "
                                              r"\(pretrain.lr \(0.002 there, 0.01 now\)\)"):
        load_pretrained_backbone(model, project / BACKBONE, cfg)
    with pytest.raises(CheckpointError, match="run `frcnn pretrain` first"):
        load_pretrained_backbone(model, tmp_path / "none.pt", cfg)
    # pretrain.steps 0: the file is not used at all (random or ImageNet weights)
    off = load_config(project / "params.yaml", {"pretrain.steps": 0})
    assert load_pretrained_backbone(model, project / BACKBONE, off) is None


def test_steps_zero_writes_a_file_without_weights(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_params(steps=0)))
    assert run_stage("pretrain", tmp_path, progress=False) == {"steps": 0}  # no data needed
    assert torch.load(tmp_path / BACKBONE, weights_only=True)["backbone"] is None


@pytest.mark.parametrize("overrides, message", [
    ({"pretrain.steps": 10, "model.pretrained": True}, "pretrain.steps: must be 0 with model.pretrained"),
    ({"pretrain.steps": 10, "model.frozen_bn": True}, "pretrain.steps: must be 0 with model.frozen_bn"),
    ({"pretrain.crop_size": 16}, "pretrain.crop_size: must be >= 32"),
    ({"pretrain.steps": -1}, "pretrain.steps: must be >= 0"),
])
def test_bad_pretrain_settings_name_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict({}, overrides)


def test_train_starts_from_the_pretrained_trunk_and_logs_its_accuracy(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow


    if not (project / BACKBONE).exists():
        run_stage("pretrain", project, progress=False)
    uri = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var in ("MLFLOW_EXPERIMENT_NAME", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(var, raising=False)
    assert run_stage("train", project)["steps"] == 2
    pretrain = json.loads((project / "reports/pretrain.json").read_text())
    runs = mlflow.MlflowClient(uri).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(uri).search_experiments()])
    assert len(runs) == 1 and runs[0].data.params["pretrain.steps"] == "60"
    acc = runs[0].data.metrics["pretrain.heldout_accuracy"]
    assert acc == pytest.approx(pretrain["heldout_accuracy"])

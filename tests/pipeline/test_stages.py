"""The train -> evaluate -> report stages end to end on a tiny project, with a real MLflow store:
the files each stage promises, one MLflow run shared by train and evaluate, an unreachable
tracking server, `frcnn train --resume`."""

from __future__ import annotations

import csv
import json
import math
import shutil
import socket
import subprocess
from pathlib import Path

import mlflow
import pytest
import torch
from tests.tiny_project import build_project, copy_project, run_stage
from typer.testing import CliRunner

from frcnn.cli import app
from frcnn.engine.inference import load_detector
from frcnn.pipeline.tracking import tracking_root

LOSS_COLUMNS = ["step", "loss", "loss_rpn_objectness", "loss_rpn_box", "loss_classifier",
                "loss_box_reg"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "DVC_EXP_NAME",
                "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(var, raising=False)


def _git_init(root: Path) -> None:
    """A DVC project is a git repo: the ablation tags diff params.yaml against the commit."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "params.yaml"], ["commit", "-q", "-m", "params"]):
        subprocess.run([*git, *args], cwd=root, check=True, capture_output=True)


def _sqlite(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def _strict_json(path: Path):
    def no_constant(name: str):
        raise ValueError(f"{path}: {name} is not strict JSON")
    return json.loads(path.read_text(), parse_constant=no_constant)


@pytest.fixture(scope="module")
def data_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_project(tmp_path_factory.mktemp("data") / "proj")


@pytest.fixture(scope="module")
def trained(data_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project (its own git repo and sqlite MLflow store) after a 2-step train stage."""
    proj = copy_project(data_project, tmp_path_factory.mktemp("trained") / "proj")
    _git_init(proj)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", _sqlite(proj))
        for var in ("MLFLOW_EXPERIMENT_NAME", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
            mp.delenv(var, raising=False)
        summary = run_stage("train", proj)
    assert summary["steps"] == 2 and summary["world_size"] == 1
    assert math.isfinite(summary["final_loss"])
    return proj


def test_train_evaluate_report_write_every_output_and_one_mlflow_run(
        trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proj = tmp_path / "proj"
    shutil.copytree(trained, proj, symlinks=True)  # keep `trained` pristine for the resume tests
    # the checkpoint's run id lives in mlflow.db, copied along
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _sqlite(proj))

    # train's outputs
    state = torch.load(proj / "models/model.pt", weights_only=True)
    assert state["step"] == 2 and state["num_classes"] == len(state["class_names"]) == 6
    assert state["config"]["loss"]["lambda"] == 5.0 and state["mlflow_run_id"]
    rows = _rows(proj / "reports/train/loss.csv")
    assert [int(r["step"]) for r in rows] == [1, 2]  # log_every: 1
    assert all(c in rows[0] for c in LOSS_COLUMNS)
    assert all(math.isfinite(float(r[c])) for r in rows for c in LOSS_COLUMNS)
    summary = _strict_json(proj / "reports/train/summary.json")
    assert summary["steps"] == 2 and summary["final_loss"] == pytest.approx(float(rows[-1]["loss"]),
                                                                            abs=1e-4)

    metrics = run_stage("evaluate", proj)
    path = run_stage("report", proj)

    saved = _strict_json(proj / "reports/metrics.json")  # NaN (ap_large: no large boxes) -> null
    for key in ("map", "ap50", "voc07_ap50", "voc10_ap50"):
        assert 0.0 <= saved[key] <= 1.0, key
        assert saved[key] == pytest.approx(metrics[key])
    assert saved["num_images"] == 3
    per_class = _rows(proj / "reports/per_class_ap.csv")
    assert sorted(r["class"] for r in per_class) == sorted(state["class_names"])
    for name in ("pr_curves.png", "detections.png", "pr_curves.csv", "errors.png"):
        assert (proj / "reports" / name).stat().st_size > 0, name
    detections = _strict_json(proj / "data/detections/test.json")
    errors = _strict_json(proj / "reports/errors.json")  # the TIDE breakdown of those detections
    assert errors["ap50"] == pytest.approx(saved["voc10_ap50"])
    assert errors["num_tp"] + sum(v for k, v in errors["counts"].items() if k != "missed") <= len(detections)
    assert path == proj / "reports/report.md"
    report = path.read_text()
    assert "VOC07 AP50" in report and "69.9" in report and "2 steps" in report
    assert all(f"| {c} |" in report for c in state["class_names"])
    assert not list(proj.rglob("*.tmp")) and not list((proj / "data").resolve().rglob("*.tmp"))
    model, names = load_detector(proj / "models/model.pt")  # what `frcnn predict` loads
    assert names == state["class_names"] and not model.training

    # one MLflow run: train's params and losses, evaluate's metrics, both stages' tags
    client = mlflow.MlflowClient(tracking_uri=_sqlite(proj))
    exp = client.get_experiment_by_name("frcnn")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_id == state["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.data.params["loss.lambda"] == "5.0"
    assert run.data.params["train.max_steps"] == "2"
    assert run.data.metrics["map"] == pytest.approx(metrics["map"])
    assert "loss" in run.data.metrics and "train.steps" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    tags = run.data.tags
    assert tags["ablation.varied"] == "baseline"  # params.yaml as committed
    assert tags["stage.train"] == "done" and tags["stage.evaluate"] == "done"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"loss.csv", "metrics.json", "params.json", "detections.png", "errors.json"} <= artifacts
    assert run.data.metrics["errors.background"] == pytest.approx(errors["delta_ap50"]["background"])


def test_unreachable_tracking_server_does_not_stop_training(
        data_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connection refused
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    proj = copy_project(data_project, tmp_path / "proj")
    summary = run_stage("train", proj)
    err = capsys.readouterr().err
    assert "tracking failed" in err and f"127.0.0.1:{port}" in err
    assert summary["steps"] == 2
    assert torch.load(proj / "models/model.pt", weights_only=True)["mlflow_run_id"] == ""
    assert len(_rows(proj / "reports/train/loss.csv")) == 2
    assert (proj / "reports/train/summary.json").is_file()
    assert not (proj / "mlflow.db").exists()


def test_resume_continues_and_refuses_a_changed_objective(
        trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proj = tmp_path / "proj"
    shutil.copytree(trained, proj, symlinks=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _sqlite(proj))
    monkeypatch.chdir(proj)
    run_id = torch.load("models/model.pt", weights_only=True)["mlflow_run_id"]
    runner = CliRunner()

    more = runner.invoke(app, ["train", "--resume", "--set", "train.max_steps=3"])
    assert more.exit_code == 0, more.output
    assert "resumed from models/model.pt at step 2/3" in more.stdout
    state = torch.load("models/model.pt", weights_only=True)
    assert state["step"] == 3 and state["mlflow_run_id"] == run_id  # same MLflow run
    assert [int(r["step"]) for r in _rows(Path("reports/train/loss.csv"))] == [1, 2, 3]
    assert json.loads(Path("reports/train/summary.json").read_text())["steps"] == 3

    bad = runner.invoke(app, ["train", "--resume", "--set", "train.max_steps=4",
                              "--set", "loss.lambda=1"])
    assert bad.exit_code == 2
    assert bad.stderr.startswith("error: ") and "loss.lambda" in bad.stderr
    assert torch.load("models/model.pt", weights_only=True)["step"] == 3  # untouched

    client = mlflow.MlflowClient(tracking_uri=_sqlite(proj))
    runs = client.search_runs([client.get_experiment_by_name("frcnn").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]

    # --resume without a checkpoint: an error, not a silent start at step 0
    none = runner.invoke(app, ["train", "--resume", "--checkpoint", "models/none.pt"])
    assert none.exit_code == 2
    assert none.stderr.strip() == ("error: --resume: models/none.pt: no checkpoint to continue "
                                   "(drop --resume to train from step 0)")
    assert not Path("models/none.pt").exists()
    # a refused resume must not mark the finished run as failed
    assert runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3]


def test_tracking_root_leaves_dvc_experiment_temp_copies(tmp_path: Path) -> None:
    assert tracking_root(tmp_path / ".dvc/tmp/exps/tmpabc") == tmp_path.resolve()
    assert tracking_root(tmp_path / ".dvc/tmp/exps/tmpabc/sub") == tmp_path.resolve()
    assert tracking_root(tmp_path / "proj") == (tmp_path / "proj").resolve()
    assert tracking_root(tmp_path / ".dvc/tmp") == (tmp_path / ".dvc/tmp").resolve()


def test_evaluate_says_when_the_checkpoints_architecture_overrides_the_params():
    from frcnn.config import config_from_dict
    from frcnn.pipeline.evaluate import architecture_note

    trained = config_from_dict({}).to_dict()
    assert architecture_note(Path("m.pt"), trained, config_from_dict({})) == ""
    # inference-only keys are the params' to set: no note
    assert architecture_note(Path("m.pt"), trained,
                             config_from_dict({}, {"roi.score_thresh": 0.5})) == ""
    note = architecture_note(Path("m.pt"), trained,
                             config_from_dict({}, {"model.backbone": "resnet50", "roi.output_size": 14}))
    assert note.startswith("evaluate: m.pt was trained with model.backbone='resnet18_c4' "
                           "(params: 'resnet50')") and "roi.output_size=7 (params: 14)" in note
    assert "the checkpoint's architecture is used" in note

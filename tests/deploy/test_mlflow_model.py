"""The MLflow side of a run, against a real `mlflow server` on 127.0.0.1: train logs a Model
(pyfunc with a signature and an input example) and a Dataset, fills the Source columns, the
experiment opens on its training runs, `frcnn register` registers the model under an alias, and
the registered model predicts the same boxes as `frcnn predict`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from frcnn.cli import app
from frcnn.data.dataset import DetectionDataset
from frcnn.deploy.mlflow_model import COLUMNS, images_frame
from frcnn.pipeline.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, MODEL_URI_TAG
from tests.pipeline.test_tracking import mlflow_server  # noqa: F401 -- the fixture
from tests.tiny_project import build_project, copy_project, run_stage, set_params


@pytest.fixture(scope="module")
def data_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_project(tmp_path_factory.mktemp("data") / "proj")


def _git_init(root: Path) -> None:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "params.yaml"], ["commit", "-q", "-m", "params"]):
        subprocess.run([*git, *args], cwd=root, check=True, capture_output=True)


@pytest.fixture
def trained(data_project: Path, tmp_path: Path, mlflow_server, monkeypatch: pytest.MonkeyPatch):  # noqa: F811
    url, _ = mlflow_server
    proj = copy_project(data_project, tmp_path / "proj")
    set_params(proj, tracking={"log_model": True})
    _git_init(proj)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    for var in ("MLFLOW_EXPERIMENT_NAME", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "lambda-1-s0")
    # an experiment made before this code (no kind tag): it must be switched to training runs
    mlflow.MlflowClient(tracking_uri=url).create_experiment("frcnn")
    run_stage("train", proj)
    run_stage("evaluate", proj)
    monkeypatch.chdir(proj)
    return proj, url


def test_a_train_run_has_a_model_a_dataset_a_source_and_a_training_experiment(trained) -> None:
    proj, url = trained
    import torch

    client = mlflow.MlflowClient(tracking_uri=url)
    run_id = torch.load(proj / "models" / "model.pt", weights_only=False)["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.info.run_name == "lambda-1-s0"
    assert run.data.tags["mlflow.source.name"] == "stages/train.py"
    assert len(run.data.tags["mlflow.source.git.commit"]) == 40
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "frcnn" and exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # the dataset inputs: train's split and evaluate's, with the digest of each JSON
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    import hashlib

    for context, path in (("train", proj / "data/augmented/trainval.json"),
                          ("eval", proj / "data/processed/test.json")):
        assert inputs[context].digest == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        assert json.loads(inputs[context].profile)["images"] == len(
            json.loads(path.read_text())["images"])
    # the model: logged in this run, with a signature and an input example
    uri = run.data.tags[MODEL_URI_TAG]
    info = mlflow.models.get_model_info(uri)
    assert info.run_id == run_id
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["image"]
    assert [c["name"] for c in info.signature.outputs.to_dict()] == COLUMNS
    assert info.saved_input_example_info is not None


def test_register_then_the_registered_model_predicts_what_frcnn_predict_does(
        trained, tmp_path: Path) -> None:
    proj, url = trained
    runner = CliRunner()
    result = runner.invoke(app, ["register", "--alias", "candidate"])
    assert result.exit_code == 0, result.output
    assert "registered models:/frcnn/1" in result.output
    client = mlflow.MlflowClient(tracking_uri=url, registry_uri=url)
    assert client.get_model_version_by_alias("frcnn", "candidate").version == "1"

    test = DetectionDataset(proj / "data/processed/test.json", train=False)
    paths = [Path(im["path"]) for im in test.images]
    model = mlflow.pyfunc.load_model("models:/frcnn@candidate")  # the store: MLFLOW_TRACKING_URI
    got = model.predict(images_frame(paths), params={"conf": 0.0})
    assert list(got.columns) == COLUMNS

    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", *map(str, paths), "--conf", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for i, path in enumerate(paths):
        want = json.loads((out / f"{path.stem}.json").read_text())["detections"]
        rows = got[got["image"] == i]
        assert len(rows) == len(want) > 0
        for (_, row), det in zip(rows.iterrows(), want):
            assert row["label"] == det["label"] and row["class"] == det["class"]
            assert abs(row["score"] - det["score"]) <= 5e-5  # predict's JSON rounds to 4 digits
            assert max(abs(a - b) for a, b in zip(row[["x1", "y1", "x2", "y2"]], det["box"])) <= 0.05


def test_register_names_a_run_without_a_model(data_project: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    proj = copy_project(data_project, tmp_path / "proj")  # tiny_params: log_model false
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{proj / 'mlflow.db'}")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    run_stage("train", proj)
    monkeypatch.chdir(proj)
    result = CliRunner().invoke(app, ["register"])
    assert result.exit_code == 2 and "has no logged model" in result.stderr
    assert os.path.exists(proj / "models" / "model.pt")


def test_frcnn_ui_serves_the_project_store_and_links_to_the_training_runs(
        data_project: Path, tmp_path: Path) -> None:
    import signal
    import socket
    import sys
    import time
    import urllib.request

    proj = copy_project(data_project, tmp_path / "proj")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "DVC_EXP_NAME")}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{proj / 'mlflow.db'}").create_experiment("frcnn")
    proc = subprocess.Popen([sys.executable, "-m", "frcnn.cli", "ui", "--port", str(port)],
                            cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/#/experiments/1?workflowType=machine_learning" in line
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "ui did not start"
                time.sleep(0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/"
                                    "get-by-name?experiment_name=frcnn", timeout=10) as r:
            assert json.loads(r.read())["experiment"]["experiment_id"] == "1"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)

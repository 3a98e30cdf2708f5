"""frcnn.tracking against real MLflow stores: the embedded sqlite store, a real `mlflow server` on
127.0.0.1, and servers that are not there (closed port, a socket that never answers)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from frcnn.pipeline.tracking import (
    MAX_PARAM_CHARS,
    Tracker,
    default_tags,
    metric_key,
    param_value,
)

MLFLOW_CLI = Path(sys.executable).with_name("mlflow")
PARAMS = {"loss.lambda": 5.0, "anchors.scales": [24.0, 48.0], "data.url": None, "train.epochs": 3}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test chooses its own store; a developer's MLFLOW_* settings must not leak in."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "DVC_EXP_NAME",
                "DVC_EXP_BASELINE_REV", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One project dir for the local-store tests: creating mlflow.db costs a few seconds."""
    return tmp_path_factory.mktemp("project")


def _client(root: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_param_value_and_metric_key() -> None:
    assert param_value(5.0) == "5.0"
    assert param_value((24.0, 48.0)) == "[24.0, 48.0]"
    assert param_value({"a": [1, 2]}) == "{a: [1, 2]}"
    assert param_value(None) == "null"
    assert metric_key("ap50.cup (glass):x") == "ap50.cup _glass__x"
    long = param_value("x" * 10_000)
    assert len(long) == MAX_PARAM_CHARS and long.endswith("[truncated]")


def test_default_tags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "lambda-10")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    tags = default_tags(Path(__file__).parents[2], "synth")
    assert tags["dvc.exp_name"] == "lambda-10" and tags["dvc.baseline_rev"] == "abc123"
    assert tags["dataset"] == "synth" and tags["host"] == socket.gethostname()
    assert "torch" in tags
    if "git.commit" in tags:  # the test may run from an export without .git
        assert len(tags["git.commit"]) == 40 and tags["git.dirty"] in ("true", "false")
    monkeypatch.delenv("DVC_EXP_NAME")
    plain = default_tags(tmp_path, "voc2007")  # not a git repo: no git tags, no error
    assert "git.commit" not in plain and "dvc.exp_name" not in plain


def test_local_store_run_params_metrics_artifacts_tags(project: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "exp-lambda")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "deadbeef")
    report = tmp_path / "loss.csv"
    report.write_text("step,loss\n0,1.0\n")
    with Tracker.start(project, "train-1", PARAMS, {**default_tags(project, "synth"),
                                                    "stage": "train"}) as t:
        run_id = t.run_id
        for step in range(3):
            t.log_metrics({"loss": 1.0 / (step + 1), "lr": 0.01, "note": "skip me"}, step=step)
        t.log_metrics({"ap50.cup (glass)": 0.25})  # "(" is not allowed in MLflow names
        t.log_artifact(report, "reports")
        t.log_dict({"loss": {"lambda": 5.0}}, "params.json")
        t.set_tags({"checkpoint": "models/model.pt", "long": "y" * 9000})
    assert run_id and t.run_id is None  # ended

    client = _client(project)
    exp = client.get_experiment_by_name("frcnn")
    assert exp.artifact_location == (project / "mlruns").as_uri()
    (run,) = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_id == run_id]
    assert run.info.status == "FINISHED" and run.info.run_name == "train-1"
    assert run.data.params == {"loss.lambda": "5.0", "anchors.scales": "[24.0, 48.0]",
                               "data.url": "null", "train.epochs": "3"}
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert "note" not in run.data.metrics
    assert run.data.metrics["ap50.cup _glass_"] == 0.25
    tags = run.data.tags
    assert tags["dvc.exp_name"] == "exp-lambda" and tags["dvc.baseline_rev"] == "deadbeef"
    assert tags["dataset"] == "synth" and tags["stage"] == "train"
    assert tags["checkpoint"] == "models/model.pt" and len(tags["long"]) == 8000
    listed = {a.path for a in client.list_artifacts(run_id)}
    assert listed == {"reports", "params.json"}
    assert [a.path for a in client.list_artifacts(run_id, "reports")] == ["reports/loss.csv"]
    assert (project / "mlruns" / run_id / "artifacts" / "reports" / "loss.csv").exists()


def test_resume_logs_into_same_run(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Tracker.start(project, "train-2", PARAMS, {"stage": "train"}) as t:
        run_id = t.run_id
        t.log_metrics({"loss": 2.0}, step=0)
    changed = {**PARAMS, "loss.lambda": 10.0, "eval.batch_size": 8}
    with Tracker.start(project, None, changed, {"stage": "evaluate"}, run_id=run_id) as t:
        assert t.run_id == run_id
        t.log_metrics({"loss": 1.0}, step=1)
        t.log_metrics({"map": 0.5})
    run = _client(project).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "evaluate"
    assert run.data.metrics["map"] == 0.5
    assert [m.value for m in _client(project).get_metric_history(run_id, "loss")] == [2.0, 1.0]
    # Params are immutable in MLflow: the logged value stays, new keys are added, with a note.
    assert run.data.params["loss.lambda"] == "5.0" and run.data.params["eval.batch_size"] == "8"
    err = capsys.readouterr().err
    assert "keeps its logged value for loss.lambda" in err and "tracking failed" not in err

    # A run id the store does not know (mlflow.db deleted since) starts a fresh run.
    with Tracker.start(project, None, {}, {}, run_id="0" * 32) as t:
        assert t.run_id not in (None, "0" * 32)
    assert "not found" in capsys.readouterr().err


def test_exception_marks_run_failed_and_errors_disable(project: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError):
        with Tracker.start(project, "crash", {}, {}) as t:
            run_id = t.run_id
            raise RuntimeError("boom")
    assert _client(project).get_run(run_id).info.status == "FAILED"

    t = Tracker.start(project, "flaky", {}, {})

    def broken(*args: object, **kwargs: object) -> None:
        raise ConnectionError("store went away")

    t._client.log_batch = broken  # any MLflow call that raises mid-run
    t.log_metrics({"loss": 1.0}, step=0)
    t.log_metrics({"loss": 0.5}, step=1)
    t.log_artifact(Path(__file__))
    t.end()
    err = capsys.readouterr().err
    assert err.count("tracking failed:") == 1 and "store went away" in err
    assert t.run_id is None


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real `mlflow server` on a free loopback port; yields (url, artifact dir)."""
    port = _free_port()
    art = tmp_path / "art"
    log = (tmp_path / "server.log").open("w")
    # The job runner (huey workers) is not needed and adds seconds to the start-up.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [str(MLFLOW_CLI), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'm.db'}", "--artifacts-destination",
         str(art)], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log_text = (tmp_path / "server.log").read_text()
                pytest.fail(f"mlflow server did not start:\n{log_text}")
            time.sleep(0.2)
        yield url, art
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server runs uvicorn as a child process
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _rest(url: str, endpoint: str, **query: str) -> dict:
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}",
                                timeout=10) as r:
        return json.loads(r.read())


def test_real_server_receives_params_and_metrics(mlflow_server: tuple[str, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    url, art = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    report = tmp_path / "metrics.json"
    report.write_text('{"map": 0.5}\n')
    with Tracker.start(tmp_path, "remote", PARAMS, {"stage": "train"}) as t:
        run_id = t.run_id
        for step in range(4):
            t.log_metrics({"loss": 4.0 - step}, step=step)
        t.log_artifact(report)
    assert run_id is not None
    assert not (tmp_path / "mlflow.db").exists()  # the env var really redirected the run

    run = _rest(url, "runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["loss.lambda"] == "5.0" and params["anchors.scales"] == "[24.0, 48.0]"
    assert {m["key"]: m["value"] for m in run["data"]["metrics"]} == {"loss": 1.0}
    history = _rest(url, "metrics/get-history", run_id=run_id, metric_key="loss")["metrics"]
    assert sorted((int(m.get("step", 0)), m["value"]) for m in history) == [
        (0, 4.0), (1, 3.0), (2, 2.0), (3, 1.0)]
    assert list(art.rglob("metrics.json"))  # the artifact went through the server's proxy
    # The environment is as before: the short HTTP settings apply only during our calls.
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ


def _fake_training(tracker: Tracker, out: Path) -> None:
    for step in range(3):
        tracker.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    out.write_text("weights\n")
    tracker.log_artifact(out)
    tracker.log_dict({"a": 1}, "params.json")
    tracker.set_tags({"checkpoint": str(out)})


def test_unreachable_server_disables_quickly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    start = time.monotonic()
    with Tracker.start(tmp_path, "offline", PARAMS, {}) as t:
        elapsed = time.monotonic() - start
        assert t.run_id is None and not t.enabled
        _fake_training(t, tmp_path / "model.pt")
    assert elapsed < 10
    assert (tmp_path / "model.pt").read_text() == "weights\n"
    lines = [line for line in capsys.readouterr().err.splitlines() if "tracking failed" in line]
    assert len(lines) == 1
    assert lines[0].startswith(f"tracking failed: {url}: cannot reach the server (")
    assert "Connection refused" in lines[0]
    assert lines[0].endswith("; training continues, outputs are still written")
    assert not (tmp_path / "mlflow.db").exists()


def test_server_that_never_answers_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A listening socket that never replies (a hung or firewalled server): the probe's short
    timeout, not MLflow's default 120 s x 7 retries, bounds the wait."""
    with socket.socket() as sink:
        sink.bind(("127.0.0.1", 0))
        sink.listen(16)  # connections complete in the backlog; nobody ever reads or answers
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{sink.getsockname()[1]}")
        start = time.monotonic()
        t = Tracker.start(tmp_path, "hung", PARAMS, {})
        elapsed = time.monotonic() - start
    assert t.run_id is None and elapsed < 15
    _fake_training(t, tmp_path / "model.pt")
    t.end()
    err = capsys.readouterr().err
    assert err.count("tracking failed:") == 1 and "timed out" in err

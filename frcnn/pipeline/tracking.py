"""MLflow behind one small, failure-tolerant object.

    tags = default_tags(root, "synth")
    with Tracker.start(root, run_name=None, params=cfg.flat(), tags=tags) as t:
        t.log_metrics({"loss": 0.7}, step=10)
        t.log_artifact(root / "reports/metrics.json")

Where runs go: `MLFLOW_TRACKING_URI` when set (a team server), else the embedded store inside the
project, `sqlite:///<root>/mlflow.db` with artifacts under `<root>/mlruns/` (open it with
`mlflow ui --backend-store-uri sqlite:///mlflow.db` from the project root). Experiment: "frcnn", or
`MLFLOW_EXPERIMENT_NAME`.

Tracking must never cost a training run: if the store is unreachable or any MLflow call raises,
the tracker prints one line, `tracking failed: <uri>: <reason>; training continues, outputs are
still written`, to stderr and ignores every later call. MLflow's HTTP client retries for minutes by
default, so calls to a server run under short retry/timeout settings (see `_HTTP_PROBE`/`_HTTP_RUN`)
unless the user set those variables themselves.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from frcnn.config import Config, config_from_dict, flatten
from frcnn.errors import ConfigError

DEFAULT_EXPERIMENT = "frcnn"
# Without this tag MLflow 3's UI opens an experiment in its GenAI view (traces, sessions, judges);
# with it, on the training runs.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
MODEL_URI_TAG = "frcnn.model_uri"  # the run's logged MLflow model, for `frcnn register`
MAX_PARAM_CHARS = 6000  # MLflow's MAX_PARAM_VAL_LENGTH; longer values are rejected, not truncated
MAX_TAG_CHARS = 8000  # MLflow's MAX_TAG_VAL_LENGTH
_TRUNCATION_NOTE = "...[truncated]"

# The first call to a server decides whether tracking is on: fail within seconds, not minutes.
_HTTP_PROBE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}
# Later calls may ride out a short blip; a server that dies mid-run costs a few seconds (refused)
# to ~30 s (hung), once, before the tracker turns itself off.
_HTTP_RUN = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def tracking_uri(project_root: Path) -> str:
    """`MLFLOW_TRACKING_URI` if set, else the project's embedded sqlite store."""
    default = f"sqlite:///{project_root.resolve() / 'mlflow.db'}"
    return os.environ.get("MLFLOW_TRACKING_URI") or default


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def param_value(value: Any) -> str:
    """A param as the string MLflow stores: lists/dicts in YAML flow form, long values truncated."""
    if isinstance(value, (list, tuple, dict)) or value is None:
        text = yaml.safe_dump(list(value) if isinstance(value, tuple) else value,
                              default_flow_style=True, width=sys.maxsize).strip()
        text = text.removesuffix("\n...").strip()  # safe_dump ends a bare scalar with "..."
    else:
        text = str(value)
    if len(text) > MAX_PARAM_CHARS:
        text = text[: MAX_PARAM_CHARS - len(_TRUNCATION_NOTE)] + _TRUNCATION_NOTE
    return text


def metric_key(name: str) -> str:
    """`name` with the characters MLflow rejects in metric/param names (e.g. "(") replaced by "_",
    so a class called "cup (glass)" cannot switch tracking off."""
    return re.sub(r"[^/\w.\- ]", "_", name)


def _tag(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_TAG_CHARS else text[: MAX_TAG_CHARS - 14] + _TRUNCATION_NOTE


def _git(project_root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=project_root, capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):  # no git, not a repo, hung
        return None
    return out.stdout.strip()


def default_tags(project_root: Path, dataset: str) -> dict[str, str]:
    """Tags every run carries: git commit and dirty flag, DVC experiment, dataset, host, torch."""
    tags = {"dataset": dataset, "host": socket.gethostname()}
    commit = _git(project_root, "rev-parse", "HEAD")
    if commit:
        tags["git.commit"] = commit
        tags["mlflow.source.git.commit"] = commit  # the key the MLflow UI shows
        status = _git(project_root, "status", "--porcelain")
        if status is not None:
            tags["git.dirty"] = "true" if status else "false"
    for env, key in (("DVC_EXP_NAME", "dvc.exp_name"),
                     ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev")):
        if os.environ.get(env):
            tags[key] = os.environ[env]
    try:
        import torch
        tags["torch"] = torch.__version__
    except ImportError:
        pass
    return tags


@contextlib.contextmanager
def _env(overrides: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of one call; the user's own settings win."""
    added = [k for k in overrides if k not in os.environ]
    os.environ.update({k: overrides[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """The reason in one short line. MLflow wraps a network error in a long urllib3 message whose
    useful part ("[Errno 111] Connection refused", "Read timed out") sits at the very end."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    cause = re.search(r"\[Errno -?\d+\][^'\"()]*|(Read|Connect) timed out", text)
    if cause:
        return f"cannot reach the server ({cause.group(0).strip()})"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Tracker:
    """One MLflow run. Every method is a no-op once disabled (`run_id is None`)."""

    def __init__(self, client: Any = None, run_id: str | None = None, uri: str = "") -> None:
        self._client = client
        self.run_id = run_id
        self.uri = uri
        self._http = uri.startswith(("http://", "https://"))

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    @classmethod
    def disabled(cls) -> Tracker:
        """A tracker that logs nothing (non-main ranks, tests, tracking turned off)."""
        return cls()

    @classmethod
    def start(cls, project_root: Path, run_name: str | None, params: Mapping[str, Any],
              tags: Mapping[str, str], run_id: str | None = None) -> Tracker:
        """Open a new run, or resume `run_id` (evaluate logs into train's run).

        Never raises for tracking problems: returns a disabled tracker after one warning line.
        A `run_id` the store does not know (e.g. mlflow.db was deleted) starts a new run instead.
        """
        uri = tracking_uri(project_root)
        tracker = cls(uri=uri)
        try:
            with _env(_HTTP_PROBE if tracker._http else {}):
                import mlflow  # imported here: a disabled tracker never pays for it
                from mlflow.entities import RunTag

                tracker._client = client = mlflow.MlflowClient(tracking_uri=uri)
                exp_id = tracker._experiment_id(project_root)  # the reachability probe
            with tracker._call_env():
                run = tracker._resume(run_id) if run_id else None
                resumed = run is not None
                if run is None:
                    run = client.create_run(exp_id, run_name=run_name,
                                            tags={k: _tag(v) for k, v in tags.items()})
                tracker.run_id = run.info.run_id
                tracker._log_params(run, params)
                if resumed and tags:  # create_run set them on a new run
                    client.log_batch(tracker.run_id,
                                     tags=[RunTag(k, _tag(v)) for k, v in tags.items()])
        except Exception as exc:  # noqa: BLE001 -- any failure means "run without tracking"
            tracker._fail(exc)
        return tracker

    # --- setup helpers -------------------------------------------------------------------------

    def _experiment_id(self, project_root: Path) -> str:
        from mlflow.exceptions import MlflowException

        name = experiment_name()
        exp = self._client.get_experiment_by_name(name)
        if exp is None:
            # Pin artifacts inside the project for the embedded store; a server chooses its own.
            location = (None if self._http or "MLFLOW_TRACKING_URI" in os.environ
                        else (project_root.resolve() / "mlruns").as_uri())
            try:
                return self._client.create_experiment(name, artifact_location=location,
                                                      tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            except MlflowException as exc:  # another process created it between our two calls
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp = self._client.get_experiment_by_name(name)
        if exp.lifecycle_stage == "deleted":
            self._client.restore_experiment(exp.experiment_id)
        if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # one made before, or elsewhere
            self._client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id

    def _resume(self, run_id: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            run = self._client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            print(f"tracking: run {run_id} not found in {self.uri}; starting a new run",
                  file=sys.stderr)
            return None
        self._client.update_run(run_id, status="RUNNING")
        return run

    def _log_params(self, run: Any, params: Mapping[str, Any]) -> None:
        """Log params; on a resumed run, keys it already has keep their value (MLflow params are
        immutable and a conflicting write would fail the whole batch)."""
        from mlflow.entities import Param

        existing = run.data.params
        values = {metric_key(k): param_value(v) for k, v in params.items()}
        clashes = sorted(k for k, v in values.items() if k in existing and existing[k] != v)
        if clashes:
            print(f"tracking: run {run.info.run_id} keeps its logged value for "
                  f"{', '.join(clashes)}", file=sys.stderr)
        new = [Param(k, v) for k, v in values.items() if k not in existing]
        if new:
            self._client.log_batch(run.info.run_id, params=new)

    # --- logging -------------------------------------------------------------------------------

    def _call_env(self) -> contextlib.AbstractContextManager[None]:
        return _env(_HTTP_RUN if self._http else {})

    def _fail(self, exc: BaseException) -> None:
        """Warn once and turn every later call into a no-op."""
        uri = re.sub(r"//[^/@]*@", "//***@", self.uri)  # no password from user:pass@host in logs
        print(f"tracking failed: {uri}: {_one_line(exc)}; training continues, "
              "outputs are still written", file=sys.stderr, flush=True)
        self.run_id = None
        self._client = None

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            with self._call_env():
                yield
        except Exception as exc:  # noqa: BLE001 -- see _fail
            self._fail(exc)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log several metrics in one request (training calls this every `log_every` steps).
        Values that are not numbers (None, strings) are skipped rather than failing the run;
        keys go through `metric_key`."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = []
        for key, value in metrics.items():
            try:
                batch.append(Metric(metric_key(key), float(value), now, step or 0))
            except (TypeError, ValueError):
                continue
        with self._guard():
            self._client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Copy a file, or a directory's contents, into the run's artifacts."""
        if not self.enabled:
            return
        with self._guard():
            if Path(path).is_dir():
                self._client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, d: Mapping[str, Any], name: str) -> None:
        """Store a dict as an artifact; `name` ending in .json or .yaml picks the format."""
        if not self.enabled:
            return
        with self._guard():
            self._client.log_dict(self.run_id, dict(d), name)

    def log_dataset(self, path: Path, context: str) -> None:
        """Record a COCO JSON split as the run's dataset input (`context`: "train" or "eval"):
        its name, SHA-256 digest, path, and image/object counts as the profile."""
        if not self.enabled:
            return
        import hashlib
        import json

        with self._guard():
            from mlflow.entities import Dataset, DatasetInput, InputTag

            raw = Path(path).read_bytes()
            coco = json.loads(raw)
            profile = {"images": len(coco.get("images", [])),
                       "objects": len(coco.get("annotations", [])),
                       "classes": [c["name"] for c in coco.get("categories", [])]}
            dataset = Dataset(name=f"{Path(path).parent.name}/{Path(path).stem}",
                              digest=hashlib.sha256(raw).hexdigest()[:16], source_type="local",
                              source=json.dumps({"uri": str(Path(path).resolve())}),
                              profile=json.dumps(profile))
            self._client.log_inputs(self.run_id, datasets=[
                DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])])

    def log_model(self, checkpoint: Path, example_images: list[Path]) -> str | None:
        """Log `checkpoint` as the run's MLflow model (`frcnn.deploy.mlflow_model`: a pyfunc with
        a signature and `example_images` as its input example); returns its model URI and tags
        the run with it (`frcnn.model_uri`)."""
        if not self.enabled:
            return None
        with self._guard():
            import mlflow

            from frcnn.deploy.mlflow_model import log_detector

            # the fluent API (log_model needs an active run) reads the store from the variable;
            # set only for this call, and never mlflow.set_tracking_uri, whose value would stick
            with _env({"MLFLOW_TRACKING_URI": self.uri}), mlflow.start_run(run_id=self.run_id):
                info = log_detector(checkpoint, example_images)
            self._client.set_tag(self.run_id, MODEL_URI_TAG, info.model_uri)
            return info.model_uri
        return None

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.enabled or not tags:
            return
        from mlflow.entities import RunTag

        with self._guard():
            self._client.log_batch(self.run_id, tags=[RunTag(k, _tag(v)) for k, v in tags.items()])

    def end(self, status: str = "FINISHED") -> None:
        """Close the run ("FINISHED", "FAILED" or "KILLED"); later calls do nothing."""
        if not self.enabled:
            return
        with self._guard():
            self._client.set_terminated(self.run_id, status=status)
        self.run_id = None
        self._client = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.end("FINISHED")
        else:
            self.end("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")


def tracking_root(root: Path) -> Path:
    """Where the MLflow store lives: the project itself, also for a queued DVC experiment, which
    runs in a temporary copy under <project>/.dvc/tmp/exps/ that is deleted afterwards."""
    resolved = root.resolve()
    parts = resolved.parts
    for i in range(len(parts) - 3):
        if parts[i: i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return resolved


def varied_params(current: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys whose value differs from the baseline's -> current value (seed excluded)."""
    a, b = flatten(current), flatten(baseline)
    return {k: a.get(k) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k != "seed"}



def baseline_params(project_root: Path, rev: str | None) -> dict[str, Any] | None:
    """params.yaml at `rev` (the experiment's baseline commit), as a full config dict."""
    try:
        text = subprocess.run(["git", "show", f"{rev or 'HEAD'}:params.yaml"], cwd=project_root,
                              capture_output=True, text=True, check=True).stdout
        return config_from_dict(yaml.safe_load(text) or {}).to_dict()
    except (subprocess.CalledProcessError, FileNotFoundError, ConfigError, yaml.YAMLError):
        return None



def ablation_tags(project_root: Path, current: dict[str, Any]) -> dict[str, str]:
    """ablation.group / .varied / .baseline for the MLflow run of the current params."""
    exp = os.environ.get("DVC_EXP_NAME", "")
    rev = os.environ.get("DVC_EXP_BASELINE_REV") or None
    base = baseline_params(project_root, rev)
    # `frcnn ablate` names the group; a hand-queued `<group>-<i>-s<seed>` experiment implies it
    group = os.environ.get("FRCNN_ABLATION_GROUP") or (
        exp.rsplit("-", 2)[0] if exp.count("-") >= 2 else (exp or "workspace"))
    tags = {"ablation.group": group,
            "ablation.baseline": rev or "HEAD"}
    if base is not None:
        varied = varied_params(current, base)
        tags["ablation.varied"] = "; ".join(f"{k}={v}" for k, v in varied.items()) or "baseline"
    return tags


def start_stage_run(project: Path, cfg: Config, stage: str, run_id: str | None = None) -> Tracker:
    """The MLflow run of one pipeline stage (train opens it, evaluate reopens it by `run_id`),
    named after its DVC experiment, with `cfg`'s params, tagged with the code version and what
    the ablation varies."""
    # the UI's Source column: the stage that opened the run (evaluate and explain reopen it)
    source = {"mlflow.source.name": f"stages/{stage}.py", "mlflow.source.type": "LOCAL"}
    return Tracker.start(tracking_root(project), run_name=os.environ.get("DVC_EXP_NAME"),
                         params=cfg.flat(),
                         tags={**default_tags(project, cfg.data.dataset), f"stage.{stage}": "done",
                               **ablation_tags(project, cfg.to_dict()),
                               **(source if stage == "train" else {})},
                         run_id=run_id)

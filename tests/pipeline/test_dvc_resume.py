"""A real `dvc repro` of the tiny project killed by Ctrl-C (SIGINT to its process group) in the
middle of training: the checkpoint survives in the persistent out, the next `dvc repro` continues
from it and ends with the metrics of an uninterrupted run; a changed budget starts over."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.tiny_project import REPO, tiny_params

pytestmark = pytest.mark.slow
STEPS = 60


def _project(root: Path) -> Path:
    root.mkdir(parents=True)
    params = tiny_params()
    params["train"].update(max_steps=STEPS, checkpoint_every=1000, log_every=5)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    for name in ("frcnn", "stages"):
        os.symlink(REPO / name, root / name)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "models").mkdir()
    subprocess.run([_dvc(), "init", "--no-scm", "-q"], cwd=root, check=True)
    return root


def _dvc() -> str:
    return str(Path(sys.executable).parent / "dvc")


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "MLFLOW_TRACKING_URI": ""}


def _repro(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_dvc(), "repro"], cwd=root, env=_env(), capture_output=True, text=True,
                          timeout=600)


def _interrupted(cmd: list[str], cwd: Path, at_step: int) -> tuple[int, str]:
    """Run `cmd` in its own process group and Ctrl-C it (SIGINT to the group, as a terminal
    does) once training has logged `at_step` steps -> (exit code, output)."""
    # SIGINT handled by default, as in a terminal: a test run from a background job (`make
    # test-all &`, nohup) inherits SIGINT ignored, and an ignored Ctrl-C would interrupt nothing
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(iter(lambda: proc.stdout.read(64), "")))
    reader.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        steps = [int(s) for s in re.findall(rf"train:.*?\b(\d+)/{STEPS}\b", "".join(out))]
        if steps and max(steps) >= at_step:
            os.killpg(proc.pid, signal.SIGINT)
            break
        time.sleep(0.05)
    proc.wait(timeout=120)
    reader.join(timeout=10)
    return proc.returncode, "".join(out)


def _repro_interrupted(root: Path, at_step: int) -> tuple[int, str]:
    return _interrupted([_dvc(), "repro"], root, at_step)


def test_a_killed_dvc_repro_continues_from_its_checkpoint_and_ends_as_if_never_stopped(tmp_path):
    whole = _project(tmp_path / "whole")
    done = _repro(whole)
    assert done.returncode == 0, done.stdout + done.stderr
    expected = json.loads((whole / "reports/metrics.json").read_text())

    cut = _project(tmp_path / "cut")
    code, output = _repro_interrupted(cut, at_step=10)
    assert code != 0, output
    assert "interrupted by SIGINT after step" in output, output[-2000:]
    step = torch.load(cut / "models/model.pt", weights_only=True)["step"]
    assert 10 <= step < STEPS
    assert not (cut / "reports/metrics.json").exists()

    again = _repro(cut)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"continuing the interrupted training at step {step}/{STEPS}" in again.stderr + again.stdout
    assert json.loads((cut / "reports/metrics.json").read_text()) == expected
    assert json.loads((cut / "reports/train/summary.json").read_text())["steps"] == STEPS

    # another budget is another training: it starts over, it does not "continue" a finished run
    params = yaml.safe_load((cut / "params.yaml").read_text())
    params["train"]["max_steps"] = STEPS + 4
    (cut / "params.yaml").write_text(yaml.safe_dump(params))
    longer = _repro(cut)
    assert longer.returncode == 0, longer.stdout + longer.stderr
    assert f"train.max_steps: {STEPS} -> {STEPS + 4}" in longer.stderr + longer.stdout
    assert json.loads((cut / "reports/train/summary.json").read_text())["steps"] == STEPS + 4


def _train_interrupted(workspace: Path, at_step: int) -> tuple[int, str]:
    return _interrupted([sys.executable, str(REPO / "stages/train.py"), "--auto-resume"],
                        workspace, at_step)


def test_a_queued_experiment_killed_mid_train_continues_in_its_next_temporary_copy(tmp_path):
    """A queued `dvc exp run` trains in `<project>/.dvc/tmp/exps/<tmp>/`, deleted when it fails:
    the checkpoint copy kept under the project's .dvc/tmp lets the next copy continue."""
    from tests.tiny_project import build_project

    project = build_project(tmp_path / "project", params=_tiny_study_params())
    (project / ".dvc" / "tmp" / "exps").mkdir(parents=True)

    def workspace(name: str) -> Path:
        ws = project / ".dvc" / "tmp" / "exps" / name
        ws.mkdir()
        shutil.copy(project / "params.yaml", ws / "params.yaml")
        os.symlink(project / "data", ws / "data")
        return ws

    whole = workspace("whole")
    done = subprocess.run([sys.executable, str(REPO / "stages/train.py"), "--auto-resume"],
                          cwd=whole, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = torch.load(whole / "models/model.pt", weights_only=True)["model"]
    assert not list((project / ".dvc/tmp/frcnn-resume").glob("*.pt"))  # finished: no copy left

    first = workspace("first")
    code, output = _train_interrupted(first, at_step=10)
    assert code == 130, output[-2000:]
    shutil.rmtree(first)  # what DVC does with a failed experiment's copy
    second = workspace("second")
    again = subprocess.run([sys.executable, str(REPO / "stages/train.py"), "--auto-resume"],
                           cwd=second, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "continuing the interrupted training at step" in again.stderr
    assert "the copy kept for reruns" in again.stderr
    got = torch.load(second / "models/model.pt", weights_only=True)["model"]
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def _tiny_study_params() -> dict:
    params = tiny_params()
    params["train"].update(max_steps=STEPS, checkpoint_every=1000, log_every=5)
    return params

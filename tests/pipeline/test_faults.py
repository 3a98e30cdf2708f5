"""Real filesystem faults under the stage scripts: a read-only folder and a full disk (a small
tmpfs in a user namespace; where the kernel refuses one, RLIMIT_FSIZE for the full disk), and a
file-size limit mid-way. Each must end in one `error:` line naming the path and the cause, exit 2,
and leave the stage's old outputs as they were (all old, never half new)."""

from __future__ import annotations

import hashlib
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_project import REPO, build_project, run_stage

PY = sys.executable


def _namespaces() -> bool:
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


NAMESPACES = shutil.which("unshare") is not None and _namespaces()


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


def _stage(project: Path, stage: str, *args: str, mount: str = "",
           fsize: int | None = None) -> subprocess.CompletedProcess[str]:
    """`python stages/<stage>.py ARGS` in `project`; `mount`: shell run first, inside a private
    mount namespace (e.g. a read-only or tiny tmpfs over an output folder)."""
    cmd = [PY, str(REPO / "stages" / f"{stage}.py"), *args]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}

    def limit() -> None:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    if mount:
        cmd = ["unshare", "-rm", "sh", "-c", f"{mount} && exec {shlex.join(cmd)}"]
    return subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit)


def _one_error_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = build_project(tmp_path_factory.mktemp("faults"))
    run_stage("train", root)
    run_stage("evaluate", root)
    return root


@pytest.mark.skipif(not NAMESPACES, reason="needs user namespaces; the RLIMIT cases below still run")
def test_a_read_only_reports_folder_stops_preprocess_before_it_replaces_any_output(project):
    before = _digest(project / "data" / "processed")
    reports = project / "reports"
    result = _stage(project, "preprocess", "--raw", "data/raw", "--out", "data/processed",
                    "--reports", "reports",
                    mount=f"mount -t tmpfs -o ro,size=1m tmpfs {shlex.quote(str(reports))}")
    _one_error_line(result, "reports/data_summary.json: cannot write in", "read-only file system")
    assert _digest(project / "data" / "processed") == before  # all old


@pytest.mark.skipif(not NAMESPACES, reason="needs user namespaces; see the RLIMIT test")
def test_a_read_only_models_folder_is_found_before_the_first_step(project):
    models = project / "models"
    result = _stage(project, "train", "--data", "data/augmented/trainval.json",
                    "--backbone", "models/backbone.pt", "--checkpoint", "models/model.pt",
                    "--reports", "reports/train", "--set", "train.max_steps=500",
                    mount=f"mount -t tmpfs -o ro,size=1m tmpfs {shlex.quote(str(models))}")
    _one_error_line(result, "models/model.pt: cannot write in", "read-only file system")
    assert "train:" not in result.stderr  # not one step trained


@pytest.mark.skipif(not NAMESPACES, reason="needs user namespaces; see the RLIMIT test")
def test_a_full_disk_is_named_up_front_with_the_space_it_lacks(project, tmp_path):
    saved = tmp_path / "saved"
    shutil.copytree(project / "reports", saved)
    reports = project / "reports"
    size_kb = sum(p.stat().st_size for p in saved.rglob("*") if p.is_file()) // 1024 + 1024
    mount = (f"mount -t tmpfs -o size={size_kb}k tmpfs {shlex.quote(str(reports))} && "
             f"cp -r {shlex.quote(str(saved))}/. {shlex.quote(str(reports))}")
    result = _stage(project, "evaluate", "--checkpoint", "models/model.pt",
                    "--test", "data/processed/test.json", "--reports", "reports",
                    "--detections", "data/detections/test.json", mount=mount)
    _one_error_line(result, "reports/metrics.json: only", "MB free in", "needs about")


def test_a_write_that_fails_half_way_leaves_every_old_output(project):
    """RLIMIT_FSIZE: any file over 20 kB fails (EFBIG) - the PNGs, after the JSONs were written
    to their temp names. The transaction drops them all: the old outputs stay."""
    before = {p: p.read_bytes() for p in (project / "reports").glob("*") if p.is_file()}
    det_before = (project / "data/detections/test.json").read_bytes()
    result = _stage(project, "evaluate", "--checkpoint", "models/model.pt",
                    "--test", "data/processed/test.json", "--reports", "reports",
                    "--detections", "data/detections/test.json", "--set", "roi.score_thresh=0.5",
                    fsize=20_000)
    _one_error_line(result, "cannot write (file too large for the file system)")
    after = {p: p.read_bytes() for p in (project / "reports").glob("*") if p.is_file()}
    assert after == before
    assert (project / "data/detections/test.json").read_bytes() == det_before
    assert not list(project.rglob("*.tmp"))


def test_two_runs_replacing_one_folder_the_second_is_told_and_the_first_wins(project):
    import time

    first = subprocess.Popen([PY, "-c", (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from frcnn.fileio import staged_dir\n"
        "with staged_dir('data/augmented') as s:\n"
        "    print('holding', flush=True); time.sleep(20)\n" % str(REPO))],
        cwd=project, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "holding"
        t0 = time.monotonic()
        result = _stage(project, "augment", "--processed", "data/processed", "--out",
                        "data/augmented", "--preview", "reports/augment_preview.png")
        _one_error_line(result, "data/augmented: another run is writing it",
                        f"held by pid {first.pid}")
        assert time.monotonic() - t0 < 15  # refused at once, not after waiting
    finally:
        first.kill()
        first.wait()
    assert (project / "data/augmented/trainval.json").is_file()

"""The VOC presets rehearsed end to end on the CPU: archives with VOC's real names and layout are
served on loopback, and `frcnn exp <preset>` runs each preset through `dvc exp run` (download ->
preprocess -> augment -> pretrain -> train -> evaluate -> report) at shrunk sizes, pointed at those
archives with `data.mirrors` and `data.archive_md5` (the built-in MD5s are VOC's real ones).

What it proves: the presets' keys are all real and valid together, the VOC code path (three
archives, two years merged under one VOCdevkit, difficult and truncated flags, 07+12 training
with 07 test) runs through DVC, multi-scale training, adaptive RoIAlign, frozen BatchNorm and the
R50-C4 res5 head run, and every stage's outputs appear. Not what it proves: accuracy (a handful
of steps on noise images, random weights)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from frcnn.data.download import VOC_ARCHIVES
from frcnn.data.voc import VOC_CLASSES
from frcnn.tools.presets import load_presets
from tests.data.data_helpers import FileServer
from tests.tiny_project import REPO

# (archive key, year folder, split list, image ids)
LAYOUT = {
    "voc2007_trainval": ("VOC2007", "trainval", [f"00{i:04d}" for i in (5, 7, 9, 12, 16, 17)]),
    "voc2007_test": ("VOC2007", "test", [f"00{i:04d}" for i in (1, 2, 3, 4)]),
    "voc2012_trainval": ("VOC2012", "trainval", [f"2008_00{i:04d}" for i in (8, 15, 19, 23)]),
}
SIZES = [(500, 375), (375, 500), (500, 333)]  # VOC's usual shapes

# The presets at rehearsal scale: tiny images and RoI counts, two steps, random weights, the CPU.
SHRINK = {
    "model.pretrained": False, "model.frozen_bn": True,
    "model.min_size": 96, "model.max_size": 128, "model.min_size_train": [80, 96],
    "rpn.pre_nms_top_n_train": 300, "rpn.post_nms_top_n_train": 60,
    "rpn.pre_nms_top_n_test": 200, "rpn.post_nms_top_n_test": 40, "rpn.batch_size_per_image": 64,
    "roi.batch_size_per_image": 16, "roi.score_thresh": 0.0,
    "train.batch_size": 2, "train.max_steps": 2, "train.warmup_steps": 1, "train.num_workers": 0,
    "train.checkpoint_every": 100, "train.log_every": 1, "train.device": "cpu", "train.amp": False,
    "eval.batch_size": 2, "eval.num_preview": 2,
}


def _annotation(image_id: str, folder: str, size: tuple[int, int], rng: np.random.Generator,
                first: bool) -> str:
    """A VOC annotation with every field the devkit's files have."""
    w, h = size
    objects = []
    for k in range(int(rng.integers(2, 4))):
        cls = VOC_CLASSES[int(rng.integers(len(VOC_CLASSES)))]
        x1, y1 = int(rng.integers(1, w // 2)), int(rng.integers(1, h // 2))
        x2, y2 = int(rng.integers(x1 + 40, w)), int(rng.integers(y1 + 40, h))
        objects.append(
            f"<object><name>{cls}</name><pose>Unspecified</pose>"
            f"<truncated>{int(x2 >= w - 1 or k == 1)}</truncated><difficult>{int(k == 2 or (first and k == 1))}</difficult>"
            f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>"
            "</object>")
    return (f"<annotation><folder>{folder}</folder><filename>{image_id}.jpg</filename>"
            "<source><database>The VOC Database</database><annotation>PASCAL VOC</annotation>"
            "<image>flickr</image></source><owner><name>rehearsal</name></owner>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
            f"<segmented>0</segmented>{''.join(objects)}</annotation>")


def build_archive(out: Path, key: str) -> bytes:
    """One archive named and laid out as VOC's `key` (VOCdevkit/VOC<year>/...), as bytes."""
    folder, split, ids = LAYOUT[key]
    src = out / key / "VOCdevkit" / folder
    rng = np.random.default_rng(len(key))
    for n, image_id in enumerate(ids):
        size = SIZES[n % len(SIZES)]
        (src / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
            src / "JPEGImages" / f"{image_id}.jpg", quality=85)
        (src / "Annotations").mkdir(exist_ok=True)
        (src / "Annotations" / f"{image_id}.xml").write_text(_annotation(image_id, folder, size, rng, n == 0))
    main = src / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    if split == "trainval":  # VOC ships train/val too, and per-class lists the loader ignores
        half = len(ids) // 2
        (main / "train.txt").write_text("".join(f"{i}\n" for i in ids[:half]))
        (main / "val.txt").write_text("".join(f"{i}\n" for i in ids[half:]))
        (main / "dog_trainval.txt").write_text("".join(f"{i} -1\n" for i in ids))
    path = out / VOC_ARCHIVES[key][0]
    with tarfile.open(path, "w") as tar:  # VOC's archives are plain tars
        tar.add(out / key / "VOCdevkit", arcname="VOCdevkit")
    return path.read_bytes()


@pytest.fixture(scope="module")
def voc_server(tmp_path_factory):
    """The three archives on a loopback server -> (server, {-S key: value} pointing at them)."""
    out = tmp_path_factory.mktemp("voc-archives")
    server = FileServer()
    overrides = {"data.mirrors": [server.url("/pascal/{year}/")]}
    for key, (filename, published_md5, year) in VOC_ARCHIVES.items():
        data = build_archive(out, key)
        server.serve(f"/pascal/{year}/{filename}", data)
        overrides[f"data.archive_md5.{key}"] = hashlib.md5(data).hexdigest()
        assert overrides[f"data.archive_md5.{key}"] != published_md5
    yield server, overrides
    server.close()


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git + DVC project of this repository's pipeline (code symlinked, params copied)."""
    root = tmp_path_factory.mktemp("voc-project")
    for name in ("frcnn", "stages"):
        os.symlink(REPO / name, root / name)
    for name in ("dvc.yaml", "params.yaml", "presets.yaml"):
        shutil.copy(REPO / name, root / name)
    (root / ".gitignore").write_text("/data\n/models\n/mlruns\n/mlflow.db\n")
    (root / "models").mkdir()
    _git(root, "init", "-q")
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=root, check=True)
    _git(root, "add", "-A")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "project")
    return root


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "MLFLOW_TRACKING_URI": "",
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t", "OMP_WAIT_POLICY": "PASSIVE"}


def _exp(project: Path, preset: str, overrides: dict) -> subprocess.CompletedProcess[str]:
    from frcnn.tools.study import yaml_value

    _git(project, "checkout", "--", "params.yaml")  # each preset on params.yaml as committed
    args = [sys.executable, "-m", "frcnn.cli", "exp", preset]
    for key, value in {**SHRINK, **overrides}.items():
        args += ["--set", f"{key}={yaml_value(value)}"]
    return subprocess.run(args, cwd=project, env=_env(), capture_output=True, text=True,
                          timeout=900)


def _count(path: Path) -> int:
    return len(json.loads(path.read_text())["images"])


PRESETS = sorted(load_presets(REPO / "presets.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_runs_end_to_end_through_dvc_on_voc_shaped_archives(preset, project,
                                                                          voc_server):
    server, overrides = voc_server
    result = _exp(project, preset, overrides)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    params = yaml.safe_load((project / "params.yaml").read_text())
    settings = load_presets(REPO / "presets.yaml")[preset].settings
    assert params["data"]["dataset"] == settings["data.dataset"]
    assert params["model"]["backbone"] == settings["model.backbone"]
    raw = json.loads((project / "data/raw/manifest.json").read_text())
    trainval = _count(project / "data/processed/trainval.json")
    test = json.loads((project / "data/processed/test.json").read_text())
    n07, n07test, n12 = (len(LAYOUT[k][2]) for k in LAYOUT)
    if settings["data.dataset"] == "voc0712":  # 07+12 trainval, tested on 07 test
        assert raw["roots"] == ["VOCdevkit/VOC2007", "VOCdevkit/VOC2012"]
        assert trainval == n07 + n12
    else:
        assert raw["roots"] == ["VOCdevkit/VOC2007"] and trainval == n07
    assert len(test["images"]) == n07test
    assert [c["name"] for c in test["categories"]] == list(VOC_CLASSES)
    assert any(a["difficult"] for a in test["annotations"])  # the flag survived preprocess
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert metrics["num_images"] == n07test
    summary = json.loads((project / "reports/train/summary.json").read_text())
    assert summary["steps"] == SHRINK["train.max_steps"]
    assert (project / "reports/report.md").is_file()
    # DVC recorded it as an experiment of this name, and every archive came from the loopback server
    exps = subprocess.run([str(Path(sys.executable).parent / "dvc"), "exp", "list", "--name-only"],
                          cwd=project, env=_env(), capture_output=True, text=True)
    assert preset in exps.stdout.split()
    assert all(route.hits >= 1 for path, route in server.routes.items()
               if "2012" not in path or settings["data.dataset"] == "voc0712")


def test_a_preset_with_a_misspelt_key_fails_before_dvc_runs(project, voc_server):
    result = subprocess.run([sys.executable, "-m", "frcnn.cli", "exp", "voc07-r50c4", "--set",
                             "roi.outputsize=14", "--dry-run"], cwd=project, env=_env(),
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "preset voc07-r50c4: roi.outputsize: unknown key" in result.stderr

"""`frcnn explain` / the explain stage on a tiny trained project: every figure and the index are
written, the counts are the traced pass's, the figures land in the train run's MLflow run, and
bad input is one line naming the file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mlflow
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from frcnn.analysis.explain import summarize
from frcnn.analysis.trace import trace
from frcnn.cli import app
from frcnn.data.dataset import DetectionDataset
from frcnn.engine.inference import load_detector
from tests.tiny_project import build_project, copy_project, run_stage

FIGURES = ["1_anchors.png", "2_anchor_labels.png", "3_objectness.png", "4_proposals.png",
           "5_sampled_rois.png", "6_detections.png"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = build_project(tmp_path_factory.mktemp("data") / "proj")
    proj = copy_project(data, tmp_path_factory.mktemp("explain") / "proj")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "params.yaml"], ["commit", "-q", "-m", "params"]):
        subprocess.run([*git, *args], cwd=proj, check=True, capture_output=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{proj / 'mlflow.db'}")
        for var in ("MLFLOW_EXPERIMENT_NAME", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
            mp.delenv(var, raising=False)
        run_stage("train", proj)
        run_stage("explain", proj)
    return proj


def test_the_stage_writes_every_figure_and_counts_that_match_the_pass(project: Path) -> None:
    out = project / "reports" / "explain"
    for name in FIGURES:
        with Image.open(out / name) as im:
            assert im.size[0] > 200 and im.size[1] > 100
    counts = json.loads((out / "counts.json").read_text())
    # the same pass again, by hand: the counts are what the model computed for that image
    model, _ = load_detector(project / "models" / "model.pt")
    test = DetectionDataset(project / "data" / "processed" / "test.json", train=False)
    image, target = test[0]
    want = summarize(trace(model, image, {"boxes": target["boxes"], "labels": target["labels"]}))
    assert counts["image"] == str(test.images[0]["path"])
    assert {k: counts[k] for k in want} == json.loads(json.dumps(want))
    assert counts["gt"] == target["boxes"].shape[0] > 0
    index = (out / "index.md").read_text()
    assert all(f"]({name})" in index for name in FIGURES)
    assert f"| anchors | {counts['anchors']} |" in index


def test_the_figures_are_logged_to_the_train_run(project: Path) -> None:
    state = torch.load(project / "models" / "model.pt", weights_only=False)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    logged = {a.path for a in client.list_artifacts(state["mlflow_run_id"], "explain")}
    assert {f"explain/{n}" for n in FIGURES} | {"explain/index.md"} <= logged


def test_explain_an_image_file_with_a_voc_annotation(project: Path, tmp_path: Path) -> None:
    src = json.loads((project / "data" / "processed" / "test.json").read_text())
    image = Path(DetectionDataset(project / "data" / "processed" / "test.json",
                                  train=False).images[1]["path"])
    xml = next((project / "data" / "raw").rglob(image.stem + ".xml"))
    runner = CliRunner()
    result = runner.invoke(app, ["explain", str(image), "--gt", str(xml), "--checkpoint",
                                 str(project / "models" / "model.pt"), "--out", str(tmp_path / "x"),
                                 "--params", str(project / "params.yaml")])
    assert result.exit_code == 0, result.output
    counts = json.loads((tmp_path / "x" / "counts.json").read_text())
    name = image.name
    n_gt = sum(1 for a in src["annotations"] if a["image_id"] == next(
        im["id"] for im in src["images"] if Path(im["file_name"]).name == name)
        and not a.get("difficult", a.get("iscrowd", 0)))
    assert counts["gt"] == n_gt
    assert sorted(p.name for p in (tmp_path / "x").glob("*.png")) == FIGURES
    # no GT, into the same folder: the four figures that need none, and no stale GT figures
    result = runner.invoke(app, ["explain", str(image), "--checkpoint",
                                 str(project / "models" / "model.pt"), "--out", str(tmp_path / "x"),
                                 "--params", str(project / "params.yaml")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "x").glob("*.png")) == [
        "1_anchors.png", "3_objectness.png", "4_proposals.png", "6_detections.png"]
    assert "anchor_positive" not in json.loads((tmp_path / "x" / "counts.json").read_text())


def test_bad_input_is_one_line_naming_it(project: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    ckpt = ["--checkpoint", str(project / "models" / "model.pt"), "--params",
            str(project / "params.yaml"), "--out", str(tmp_path / "o")]
    split = str(project / "data" / "processed" / "test.json")
    r = runner.invoke(app, ["explain", "--gt", split, "--pick", "99", *ckpt])
    assert r.exit_code == 2 and "--pick 99 is outside its 3 images" in r.stderr
    xml = tmp_path / "other.xml"
    xml.write_text("<annotation><object><name>giraffe</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
                   "<xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>")
    img = next((project / "data" / "raw").rglob("*.jpg"))
    r = runner.invoke(app, ["explain", str(img), "--gt", str(xml), *ckpt])
    assert r.exit_code == 2 and "other.xml: class 'giraffe'" in r.stderr
    flat = tmp_path / "flat.xml"
    flat.write_text("<annotation><object><name>disc</name><bndbox><xmin>5</xmin><ymin>5</ymin>"
                    "<xmax>4</xmax><ymax>9</ymax></bndbox></object></annotation>")  # x2 < x1
    r = runner.invoke(app, ["explain", str(img), "--gt", str(flat), *ckpt])
    assert r.exit_code == 2 and "flat.xml" in r.stderr
    r = runner.invoke(app, ["explain", *ckpt])
    assert r.exit_code == 2 and "give an IMAGE" in r.stderr
    assert not (tmp_path / "o").exists()

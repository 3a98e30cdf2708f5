"""The plots declared in dvc.yaml render: `dvc plots diff` of two revisions and `dvc plots show`
on a git + DVC repository holding the real dvc.yaml and template and two versions of the
reports the pipeline writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DVC = Path(sys.executable).with_name("dvc")
PLOTS = ("Training loss", "Precision-recall per class", "AP50 per class")


def sh(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def write_reports(repo: Path, scale: float) -> None:
    """The three CSVs as the train and evaluate stages write them (same columns), values scaled."""
    (repo / "reports" / "train").mkdir(parents=True, exist_ok=True)
    rows = ["step,lr,loss,loss_rpn_objectness,loss_rpn_box,loss_classifier,loss_box_reg,images_per_s"]
    rows += [f"{s},0.0005,{scale * 2 / s:.4f},{scale / s:.4f},0.01,{scale / (2 * s):.4f},0.1,3.0"
             for s in (10, 20, 30)]
    (repo / "reports" / "train" / "loss.csv").write_text("\n".join(rows) + "\n")
    pr = ["class,recall,precision"] + [f"{c},{r},{min(1.0, scale * (1.1 - r)):.3f}"
                                       for c in ("disc", "star") for r in (0.1, 0.5, 0.9)]
    (repo / "reports" / "pr_curves.csv").write_text("\n".join(pr) + "\n")
    ap = ["class,ap50_coco,ap_coco,voc07_ap50,voc10_ap50,num_gt,num_difficult",
          f"disc,{0.9 * scale:.3f},0.6,0.85,0.9,95,0", f"star,{0.7 * scale:.3f},0.5,0.65,0.7,80,1"]
    (repo / "reports" / "per_class_ap.csv").write_text("\n".join(ap) + "\n")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not DVC.exists():
        pytest.skip("dvc is not installed beside this Python")
    repo = tmp_path_factory.mktemp("plots")
    sh(repo, "git", "init", "-q")
    sh(repo, str(DVC), "init", "-q")
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    (repo / ".dvc" / "plots").mkdir(exist_ok=True)
    shutil.copy(ROOT / ".dvc" / "plots" / "pr_by_class.json", repo / ".dvc" / "plots")
    for n, scale in enumerate((1.0, 0.8)):
        write_reports(repo, scale)
        sh(repo, "git", "add", "-A")
        sh(repo, "git", "commit", "-qm", f"rev {n}")
    return repo


def rendered(repo: Path, *args: str) -> dict[str, dict]:
    """Named plot -> its Vega-Lite spec, from `dvc plots ... --json`; fails on a plot error."""
    out = json.loads(sh(repo, str(DVC), *args, "--json"))
    specs = {}
    for name in PLOTS:
        entries = out["data"].get(name)
        assert entries, f"{name}: not rendered ({out.get('errors')})"
        (entry,) = entries
        assert entry["type"] == "vega"
        specs[name] = entry["content"]
    return specs


def field_of(spec: dict, channel: str) -> str:
    enc = spec.get("encoding") or next(l["encoding"] for l in spec["layer"] if "encoding" in l)
    return enc[channel]["field"]


def test_plots_diff_draws_both_revisions_with_the_declared_axes(repo: Path) -> None:
    specs = rendered(repo, "plots", "diff", "HEAD~1", "HEAD")
    for name, spec in specs.items():
        revs = {row["rev"] for row in spec["data"]["values"]}
        assert revs == {"HEAD~1", "HEAD"}, name
    pr = specs["Precision-recall per class"]
    assert (field_of(pr, "x"), field_of(pr, "y")) == ("recall", "precision")
    assert pr["encoding"]["x"]["title"] == "recall" and pr["encoding"]["y"]["title"] == "precision"
    # one line per class and per revision: colour = class, dash = revision
    assert (field_of(pr, "color"), field_of(pr, "strokeDash")) == ("class", "rev")
    assert {r["class"] for r in pr["data"]["values"]} == {"disc", "star"}
    loss = specs["Training loss"]
    assert {r["field"] for r in loss["data"]["values"]} == {
        "loss", "loss_rpn_objectness", "loss_rpn_box", "loss_classifier", "loss_box_reg"}
    ap = specs["AP50 per class"]
    assert field_of(ap, "x") == "ap50_coco" and field_of(ap, "y") == "class"
    by_rev = {(r["rev"], r["class"]): float(r["ap50_coco"]) for r in ap["data"]["values"]}
    assert by_rev[("HEAD~1", "disc")] == 0.9 and by_rev[("HEAD", "disc")] == 0.72


def test_plots_show_writes_an_html_page_with_every_declared_plot(repo: Path, tmp_path: Path) -> None:
    sh(repo, str(DVC), "plots", "show", "-o", str(tmp_path / "html"))
    page = (tmp_path / "html" / "index.html").read_text()
    for name in PLOTS:
        assert name in page
    assert "Precision-recall per class (IoU 0.5)" in page and '"strokeDash"' in page

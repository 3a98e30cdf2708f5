"""The `frcnn` commands as a user types them (typer's CliRunner on frcnn.cli.app): help, params
errors, `--set` parsing, `ablate --dry-run`, `compare` on a temporary MLflow store, `anchors`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from tests.tiny_project import REPO, build_project
from typer.testing import CliRunner

import frcnn.tools.ablation
from frcnn.cli import app, parse_overrides
from frcnn.config import ConfigError

STAGES = ["download", "preprocess", "augment", "train", "evaluate", "report"]
TOOLS = ["predict", "ablate", "compare", "anchors"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "DVC_EXP_NAME",
                "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project with data/processed/trainval.json (no training)."""
    return build_project(tmp_path_factory.mktemp("cli") / "proj")


def test_help_lists_every_command(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in STAGES + TOOLS:
        assert f" {name} " in result.stdout, name
    sub = runner.invoke(app, ["anchors", "--help"])
    assert sub.exit_code == 0 and " analyze " in sub.stdout and " show " in sub.stdout
    train = runner.invoke(app, ["train", "--help"])
    assert "--resume" in train.stdout and "--set" in train.stdout and "--params" in train.stdout


@pytest.mark.parametrize("command", [["download"], ["preprocess"], ["augment"], ["train"],
                                     ["evaluate"], ["anchors", "analyze"], ["anchors", "show"]])
def test_a_bad_param_is_one_error_line_and_exit_2(runner: CliRunner, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  command: list[str]) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [*command, "--set", "loss.lambda=-1"])
    assert result.exit_code == 2, result.output
    assert result.stderr == "error: params.yaml: loss.lambda: must be >= 0\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing ran


def test_set_overrides_are_yaml_values(runner: CliRunner, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_overrides(["anchors.scales=[32, 64.5]", "loss.lambda=10", "train.lr=0.01",
                            "train.amp=false", "data.url=null", "model.backbone=resnet50",
                            " rpn.nms_thresh = 0.6"]) == {
        "anchors.scales": [32, 64.5], "loss.lambda": 10, "train.lr": 0.01, "train.amp": False,
        "data.url": None, "model.backbone": "resnet50", "rpn.nms_thresh": 0.6}
    # YAML 1.1 reads an exponent without a dot as a string; on the command line it is a number
    assert parse_overrides(["train.lr=1e-3", "train.weight_decay=5E-4"]) == {
        "train.lr": 0.001, "train.weight_decay": 0.0005}
    assert parse_overrides(['data.url="1e-3"']) == {"data.url": "1e-3"}  # quoted: a string
    assert parse_overrides(["data.url=http://h/x?a=b"]) == {"data.url": "http://h/x?a=b"}
    assert parse_overrides(None) == {}
    for bad in ("loss.lambda", "=5"):
        with pytest.raises(ConfigError, match="expected key=value"):
            parse_overrides([bad])
    with pytest.raises(ConfigError, match="not a YAML value"):
        parse_overrides(["anchors.scales=[1, 2"])

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    for args, message in ((["--set", "loss.lambda"], "--set loss.lambda: expected key=value"),
                          (["--set", "anchors.scales=[1,"], "--set anchors.scales=[1,: not a "),
                          (["--set", "train.lr=1e-3", "--set", "nope.key=1"], "nope")):
        result = runner.invoke(app, ["download", *args])
        assert result.exit_code == 2 and result.stderr.startswith("error: "), result.output
        assert message in result.stderr and len(result.stderr.splitlines()) == 1


def test_stages_without_their_inputs_exit_2_naming_the_file(runner: CliRunner, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    for args, message in ((["train"], "data/augmented/trainval.json: not found"),
                          (["pretrain", "--set", "pretrain.steps=10"],
                           "data/processed/trainval.json: not found"),
                          (["evaluate", "--checkpoint", "none.pt"], "none.pt: checkpoint not found"),
                          (["report"], "reports/metrics.json")):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr


def test_ablate_dry_run_prints_the_queue_and_runs_nothing(runner: CliRunner, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"--dry-run ran {args}")

    monkeypatch.setattr(frcnn.tools.ablation, "queue_and_run", no_subprocess)
    monkeypatch.setattr(frcnn.tools.ablation.subprocess, "run", no_subprocess)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["ablate", "--grid", "lambda", "--dry-run", "--seeds", "2",
                                 "--set", "train.max_steps=50",
                                 "--grids", str(REPO / "ablations.yaml")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines == [f"dvc exp run --queue -n lambda-{i}-s{s} -S loss.lambda={lam} "
                     f"-S train.max_steps=50 -S seed={s}"
                     for i, lam in enumerate(("1.0", "5.0", "10.0")) for s in (0, 1)
                     ] + ["dvc exp run --run-all -j 1"]
    assert list(tmp_path.iterdir()) == []

    unknown = runner.invoke(app, ["ablate", "--grid", "nope", "--dry-run",
                                  "--grids", str(REPO / "ablations.yaml")])
    assert unknown.exit_code == 2 and "--grid nope: unknown grid" in unknown.stderr


def _fake_store(root: Path) -> str:
    import mlflow

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("frcnn", artifact_location=(root / "mlruns").as_uri())
    common = "train.max_steps=50"  # the study's --set: shared by every run, not a setting
    for varied, group, m in ((common, "lambda", 0.50), (common, "lambda", 0.60),
                             (f"loss.lambda=10.0; {common}", "lambda", 0.40),
                             (f"loss.lambda=10.0; {common}", "lambda", 0.50)):
        run = client.create_run(exp, tags={"ablation.varied": varied, "ablation.group": group})
        for key, value in (("map", m), ("ap50", 2 * m - 0.1), ("voc07_ap50", 2 * m - 0.2),
                           ("train.train_seconds", 30.0), ("train.images_per_s", 4.0)):
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id)
    client.create_run(exp, tags={"ablation.varied": "loss.lambda=1.0"})  # trained, never evaluated
    return uri


def test_compare_tabulates_runs_against_the_baseline(runner: CliRunner, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _fake_store(tmp_path))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["compare"])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "reports/ablations.md").read_text()
    assert md == result.stdout.rstrip("\n") + "\n"
    # setting | runs | mAP | AP50 | VOC07 AP50 | Δ mAP | Δ AP50 (the shared max_steps dropped)
    assert ("| baseline | 2 | 0.550 ± 0.071 | 1.000 ± 0.141 | 0.900 ± 0.141 | +0.000 | +0.000 |"
            in md)
    assert ("| loss.lambda=10.0 | 2 | 0.450 ± 0.071 | 0.800 ± 0.141 | 0.700 ± 0.141 | -0.100 "
            "| -0.200 |" in md)
    assert "loss.lambda=1.0" not in md  # no `map`: not evaluated
    assert "69.9" in md and "not measured here" in md
    rows = list(csv.DictReader((tmp_path / "reports/ablations.csv").open()))
    assert [r["setting"] for r in rows] == ["baseline", "loss.lambda=10.0"]
    assert float(rows[1]["map_delta"]) == pytest.approx(-0.1)
    assert float(rows[0]["map_delta"]) == 0.0 and rows[0]["runs"] == "2"
    assert (tmp_path / "reports/ablations.png").stat().st_size > 0
    assert not list(tmp_path.rglob("*.tmp"))


def test_compare_without_evaluated_runs_exits_2(runner: CliRunner, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["compare"])
    assert result.exit_code == 2
    # (MLflow's own INFO lines about creating the database may come first)
    assert result.stderr.splitlines()[-1] == (f"error: no evaluated runs in {uri}: "
                                              "run `make repro` first")
    assert not (tmp_path / "reports").exists()


def test_anchors_analyze_writes_coverage_json_and_plot(runner: CliRunner, project: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    result = runner.invoke(app, ["anchors", "analyze"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("configured scales [16.0, 32.0] ratios [0.5, 1.0, 2.0]: mean best IoU")
    assert lines[1].startswith("suggested  scales [") and "reach it" in lines[1]
    assert lines[2] == "-> reports/anchor_coverage.json, reports/anchor_coverage.png"

    def strict(name: str):  # a size bucket without boxes must be null, not NaN
        raise ValueError(f"{name} in anchor_coverage.json")
    cov = json.loads((project / "reports/anchor_coverage.json").read_text(), parse_constant=strict)
    gt = json.loads((project / "data/processed/trainval.json").read_text())
    c, s = cov["configured"], cov["suggested"]
    assert c["num_gt"] == sum(1 for a in gt["annotations"] if not a.get("iscrowd", 0)) > 0
    assert cov["pos_iou_thresh"] == 0.7
    for stats in (c, s, *c["per_size"].values()):
        for key in ("mean_best_iou", "fraction_above_pos_thresh"):
            assert stats[key] is None or 0.0 <= stats[key] <= 1.0, (key, stats)
    assert sum(b["num_gt"] for b in c["per_size"].values()) == c["num_gt"]
    assert sum(c["best_iou_histogram"]["counts"]) == c["num_gt"]
    assert len(s["scales_px"]) == len(c["scales_px"]) == 2
    assert len(s["ratios"]) == len(c["ratios"]) == 3
    assert f"{100 * c['fraction_above_pos_thresh']:.1f}% of {c['num_gt']} GT" in lines[0]
    assert (project / "reports/anchor_coverage.png").stat().st_size > 0

    empty = project / "empty.json"
    empty.write_text('{"images": [], "annotations": []}')
    bad = runner.invoke(app, ["anchors", "analyze", "--data", str(empty)])
    assert bad.exit_code == 2 and bad.stderr.startswith(f"error: {empty}: no ")


def test_anchors_show_draws_anchors_png(runner: CliRunner, project: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    result = runner.invoke(app, ["anchors", "show", "--index", "1"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "-> reports/anchors.png\n"
    assert (project / "reports/anchors.png").stat().st_size > 0
    missing = runner.invoke(app, ["anchors", "show", "--data", "nope.json"])
    assert missing.exit_code == 2 and "nope.json" in missing.stderr
    out_of_range = runner.invoke(app, ["anchors", "show", "--index", "99",
                                       "--out", "reports/x.png"])
    assert out_of_range.exit_code == 2 and not (project / "reports/x.png").exists()

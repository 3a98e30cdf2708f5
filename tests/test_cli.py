"""The `frcnn` commands as a user types them (typer's CliRunner on frcnn.cli.app): help, params
errors, `--set` parsing, `ablate --dry-run`, `compare` on a temporary MLflow store, `anchors`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from frcnn.cli import app, parse_overrides
from frcnn.config import ConfigError
from tests.tiny_project import REPO, build_project

STAGES = ["download", "preprocess", "augment", "train", "evaluate", "report"]
TOOLS = ["predict", "ablate", "compare", "errors", "anchors"]


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


@pytest.mark.parametrize("command", [[n] for n in STAGES + ["predict", "ablate", "compare", "bench"]]
                         + [["anchors", "analyze"], ["anchors", "show"]])
def test_every_command_that_reads_params_takes_set(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--set" in result.stdout and "--params" in result.stdout


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


def test_ablate_dry_run_lists_the_runs_and_runs_nothing(runner: CliRunner, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import frcnn.tools.study

    def no_run(*args, **kwargs):
        raise AssertionError(f"--dry-run ran {args}")

    monkeypatch.setattr(frcnn.tools.study, "run_study", no_run)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["ablate", "--grid", "lambda", "--dry-run", "--seeds", "2",
                                 "--set", "train.max_steps=50", "--params", str(REPO / "params.yaml"),
                                 "--grids", str(REPO / "ablations.yaml")])
    assert result.exit_code == 0, result.output
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == ["baseline-default-s0", "baseline-default-s1", "lambda-1.0-s0",
                     "lambda-1.0-s1", "lambda-10.0-s0", "lambda-10.0-s1"]
    assert result.stdout.splitlines()[2].endswith(
        "dvc exp run -n lambda-1.0-s0 -S loss.lambda=1.0 -S tracking.log_model=false -S train.max_steps=50 -S seed=0")
    assert list(tmp_path.iterdir()) == []

    unknown = runner.invoke(app, ["ablate", "--grid", "nope", "--dry-run",
                                  "--params", str(REPO / "params.yaml"),
                                  "--grids", str(REPO / "ablations.yaml")])
    assert unknown.exit_code == 2 and "--grid nope: unknown grid" in unknown.stderr
    missing = runner.invoke(app, ["ablate", "--grid", "lambda", "--params", str(REPO / "params.yaml"),
                                  "--grids", str(REPO / "ablations.yaml")])
    assert missing.exit_code == 2 and "run `dvc repro augment` first" in missing.stderr


def test_compare_rebuilds_the_report_from_records_alone(runner: CliRunner, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from frcnn.config import config_from_dict
    from frcnn.fileio import atomic_write_json

    base = yaml.safe_load((REPO / "params.yaml").read_text())
    env = {"cpu": "c", "cpu_capability": "AVX2", "train_precision": "float32", "torch": "t",
           "threads": 2}
    for setting, maps in (({}, (0.50, 0.60)), ({"loss.lambda": 10.0}, (0.40, 0.50))):
        for seed, m in enumerate(maps):
            params = config_from_dict(base, {**setting, "seed": seed}).to_dict()
            atomic_write_json(tmp_path / "records" / f"{seed}{len(setting)}.json",
                              {"key": f"{seed}{setting}", "name": "n", "params": params,
                               "environment": env,
                               "metrics": {"map": m, "ap50": 2 * m - 0.1, "ap75": m,
                                           "voc07_ap50": 2 * m - 0.2}})
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["compare", "--records", "records", "--group", "lambda",
                                 "--params", str(REPO / "params.yaml"),
                                 "--grids", str(REPO / "ablations.yaml")])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "reports/ablations.md").read_text()
    assert md == result.stdout.rstrip("\n") + "\n"
    assert "| loss.lambda=5.0 (baseline) | 2 | 0.5500 ± 0.0707 | 1.0000 ± 0.1414 |" in md
    assert "| loss.lambda=10.0 | 2 | 0.4500 ± 0.0707 |" in md
    assert "-0.1000 [-0.1000, -0.1000]" in md  # paired over seeds: the same drop on each
    assert "## anchor_scales" not in md  # --group: that question only
    rows = list(csv.DictReader((tmp_path / "reports/ablations.csv").open()))
    assert [r["setting"] for r in rows] == ["loss.lambda=5.0 (baseline)", "loss.lambda=1.0",
                                            "loss.lambda=10.0"]
    assert float(rows[2]["map_delta_mean"]) == pytest.approx(-0.1)
    assert (tmp_path / "reports/ablations/lambda.png").stat().st_size > 0
    assert not list(tmp_path.rglob("*.tmp"))


def test_compare_without_evaluated_runs_exits_2(runner: CliRunner, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["compare", "--mlflow", "--params", str(REPO / "params.yaml"),
                                 "--grids", str(REPO / "ablations.yaml")])
    assert result.exit_code == 2
    # (MLflow's own INFO lines about creating the database may come first)
    assert result.stderr.splitlines()[-1] == f"error: {uri}: no evaluated runs"
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


def test_errors_types_the_false_positives_of_a_detections_file(runner: CliRunner, tmp_path: Path) -> None:
    from tests.evaluation.test_errors import DETS, _gt

    (tmp_path / "gt.json").write_text(json.dumps(_gt()))
    (tmp_path / "det.json").write_text(json.dumps(DETS))
    result = runner.invoke(app, ["errors", "--detections", str(tmp_path / "det.json"),
                                 "--test", str(tmp_path / "gt.json"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "r/errors.json").read_text())
    assert saved["counts"]["localisation"] == 1 and saved["delta_ap50"]["missed"] == pytest.approx(0.25)
    assert (tmp_path / "r/errors.png").stat().st_size > 0
    bad = runner.invoke(app, ["errors", "--detections", str(tmp_path / "nope.json"),
                              "--test", str(tmp_path / "gt.json")])
    assert bad.exit_code == 2 and "nope.json" in bad.stderr

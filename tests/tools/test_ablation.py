"""Ablation planning, run tags and the comparison table (on runs in a temporary MLflow store)."""

import math

import pytest

from frcnn.config import ConfigError, config_from_dict
from frcnn.pipeline.tracking import varied_params
from frcnn.tools.ablation import (
    PlannedRun,
    ablation_table,
    load_grids,
    plan,
    runs_from_mlflow,
    to_markdown,
)


def test_the_shipped_grids_are_valid_and_plan_one_run_per_setting_and_seed():
    grids = load_grids("ablations.yaml")
    runs = plan(grids, "lambda", seeds=2, extra={"train.max_steps": 50})
    assert [r.name for r in runs] == ["lambda-0-s0", "lambda-0-s1", "lambda-1-s0", "lambda-1-s1",
                                      "lambda-2-s0", "lambda-2-s1"]
    assert runs[3].overrides == {"loss.lambda": 5.0, "train.max_steps": 50, "seed": 1}
    assert runs[0].shell() == ("dvc exp run --queue -n lambda-0-s0 -S loss.lambda=1.0 "
                               "-S train.max_steps=50 -S seed=0")
    assert "-S 'anchors.scales=[64, 128, 256]'" in plan(grids, "anchor_scales", 1)[0].shell()


def test_bad_grids_are_rejected_naming_the_key(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("grids:\n  x:\n    - {loss.lambda: -1}\n")
    with pytest.raises(ConfigError, match=r"grids\.x: loss\.lambda: must be >= 0"):
        load_grids(f)
    with pytest.raises(ConfigError, match="unknown grid"):
        plan(load_grids("ablations.yaml"), "nope", 1)


def test_varied_params_ignores_the_seed():
    base = config_from_dict({}).to_dict()
    cur = config_from_dict({}, {"loss.lambda": 10.0, "seed": 3}).to_dict()
    assert varied_params(cur, base) == {"loss.lambda": 10.0}


def _run(varied, m, seconds=60.0):
    return {"varied": varied, "group": "lambda", "metrics": {"map": m, "ap50": 2 * m,
            "voc07_ap50": 2 * m, "train.train_seconds": seconds, "train.images_per_s": 10.0}}


def test_table_means_stds_and_deltas_against_the_baseline():
    common = "train.max_steps=50"
    runs = [_run(common, 0.40), _run(common, 0.42),
            _run(f"loss.lambda=10.0; {common}", 0.30), _run(f"loss.lambda=10.0; {common}", 0.34)]
    rows = ablation_table(runs)
    assert [r["setting"] for r in rows] == ["baseline", "loss.lambda=10.0"]
    base, lam = rows
    assert base["runs"] == 2 and base["map_mean"] == pytest.approx(0.41)
    assert base["map_std"] == pytest.approx(math.sqrt(2 * 0.01 ** 2))
    assert lam["map_delta"] == pytest.approx(0.32 - 0.41)
    md = to_markdown(rows)
    assert "| loss.lambda=10.0 | 2 | 0.320 ± 0.028" in md
    assert "69.9" in md and "not measured here" in md


def test_runs_are_read_back_from_an_mlflow_store(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("frcnn", artifact_location=str(tmp_path / "art"))
    for varied, m in (("baseline", 0.5), ("loss.lambda=1.0", 0.45)):
        run = client.create_run(exp, tags={"ablation.varied": varied, "ablation.group": "lambda"})
        client.log_metric(run.info.run_id, "map", m)
    client.create_run(exp)  # a train run without evaluation: not in the table
    rows = ablation_table(runs_from_mlflow(uri, "frcnn"))
    assert [(r["setting"], r["map_mean"]) for r in rows] == [("baseline", 0.5),
                                                            ("loss.lambda=1.0", 0.45)]
    assert rows[1]["map_delta"] == pytest.approx(-0.05)


def test_planned_run_command_is_a_queued_dvc_experiment():
    assert PlannedRun("a-0-s0", {"seed": 0}).command() == ["dvc", "exp", "run", "--queue", "-n",
                                                           "a-0-s0", "-S", "seed=0"]


def test_a_group_alone_takes_its_shared_quick_setting_as_baseline():
    quick = "train.max_steps=30"
    runs = [_run("baseline", 0.44),  # a full-length workspace run: another group
            _run(quick, 0.10), _run(f"loss.lambda=1.0; {quick}", 0.05)]
    rows = ablation_table([r for r in runs if r["varied"] != "baseline"])
    assert [(r["setting"], r["map_mean"]) for r in rows] == [("baseline", 0.10),
                                                            ("loss.lambda=1.0", 0.05)]

"""The study's report: grid and question files checked, paired statistics by hand, runs matched
to settings by content, and the same tables from records and from an MLflow store."""

import json
import math

import pytest
import yaml

from frcnn.config import ConfigError, config_from_dict
from frcnn.pipeline.tracking import param_value, varied_params
from frcnn.tools.ablation import (
    build_report,
    inference_only_table,
    load_grids,
    load_questions,
    paired_delta,
    question_table,
    runs_from_mlflow,
    runs_from_records,
    timing_key,
    verdict,
)
from tests.tiny_project import REPO

BASE = yaml.safe_load((REPO / "params.yaml").read_text())
ENV = {"cpu": "cpu X", "cpu_capability": "AVX2", "train_precision": "float32", "torch": "2",
       "threads": 2}


def record(setting, seed, m, *, env=ENV, loc=0.05, test_only=()):
    """A study record as `frcnn ablate` writes it (the fields compare reads)."""
    params = config_from_dict(BASE, {**setting, "seed": seed}).to_dict()
    metrics = {"map": m, "ap50": m + 0.3, "ap75": m - 0.1, "voc07_ap50": m + 0.25,
               "ap_small": m - 0.2, "ap_large": m + 0.1, "num_detections": 100}
    return {"key": f"{setting}{seed}", "name": f"r{seed}", "params": params, "metrics": metrics,
            "environment": env, "rpn_recall": {"recall@0.5": 0.9, "recall@0.7": 0.6},
            "errors": {"delta_ap50": {"localisation": loc, "classification": 0.01}},
            "test_only": list(test_only)}


def test_the_shipped_file_is_valid_and_bad_questions_are_named(tmp_path):
    grids, questions = load_grids(REPO / "ablations.yaml"), load_questions(REPO / "ablations.yaml")
    assert set(questions) <= set(grids) and questions["lambda"]["checks"]
    f = tmp_path / "a.yaml"
    f.write_text("grids:\n  x:\n    - {loss.lambda: -1}\n")
    with pytest.raises(ConfigError, match=r"grids\.x: loss\.lambda: must be >= 0"):
        load_grids(f)
    f.write_text("grids:\n  x:\n    - {loss.lambda: 1}\nquestions:\n  x:\n    checks:\n"
                 "      - {claim: c, metric: map, higher: {loss.lambda: 2}, than: {loss.lambda: 1}}\n")
    with pytest.raises(ConfigError, match=r"checks\[0\]\.higher: .* is not a setting of grids\.x"):
        load_questions(f)


def test_paired_delta_and_its_t_interval_by_hand():
    d = paired_delta({0: 0.50, 1: 0.54, 2: 0.52}, {0: 0.40, 1: 0.46, 2: 0.40, 3: 0.9})
    # differences 0.10, 0.08, 0.12 over the 3 shared seeds: mean 0.10, sd 0.02, t(2) = 4.303
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.10)
    half = 4.303 * 0.02 / math.sqrt(3)
    assert (d["lo"], d["hi"]) == pytest.approx((0.10 - half, 0.10 + half))
    assert verdict(d) == "confirmed"
    assert verdict(paired_delta({0: 0.4, 1: 0.5}, {0: 0.5, 1: 0.6})) == "contradicted"
    assert verdict(paired_delta({0: 0.4, 1: 0.6}, {0: 0.5, 1: 0.5})) == "not distinguishable from noise"
    assert verdict(paired_delta({0: 0.4}, {0: 0.5})).startswith("not testable")


def test_runs_belong_to_settings_by_content_and_deltas_are_paired():
    grid = [{"loss.lambda": 1.0}, {"loss.lambda": 5.0}, {"loss.lambda": 10.0}]
    runs = runs_from_records(
        [record({}, s, 0.50 + 0.01 * s) for s in range(3)]
        + [record({"loss.lambda": 10.0}, s, 0.55 + 0.01 * s, loc=0.02) for s in range(3)]
        + [record({"loss.lambda": 10.0, "rpn.nms_thresh": 0.5}, 0, 0.9)])  # another setting
    rows = question_table(runs, BASE, grid, {}, {timing_key(BASE, {}, {}): {"images_per_s": 9.0}})
    assert [r["setting"] for r in rows] == ["loss.lambda=5.0 (baseline)", "loss.lambda=1.0",
                                            "loss.lambda=10.0"]
    base, one, ten = rows
    assert base["n"] == 3 and base["map_mean"] == pytest.approx(0.51) and one["n"] == 0
    assert ten["n"] == 3 and ten["map_delta"]["mean"] == pytest.approx(0.05)
    assert ten["map_delta"]["lo"] == pytest.approx(0.05)  # identical differences: no spread
    assert ten["tide_moved"] == "loc -0.030" and base["images_per_s"] == 9.0
    assert base["rpn_recall@0.5"] == 0.9


def test_inference_only_rows_compare_each_checkpoint_with_itself():
    rows = [{"key": "rpn.nms_thresh", "value": 0.5, "metrics": {"map": 0.45, "ap50": 0.8}}]
    runs = runs_from_records([record({}, s, 0.5, test_only=rows) for s in range(2)])
    (row,) = inference_only_table(runs, BASE, {})
    assert row["setting"] == "rpn.nms_thresh=0.5" and row["n"] == 2
    assert row["map_delta"]["mean"] == pytest.approx(-0.05)
    assert row["ap50_delta"]["mean"] == pytest.approx(0.0)


def test_the_report_from_records_keeps_one_environment_and_states_the_budget(tmp_path):
    recs = [record({}, s, 0.5 + 0.01 * s) for s in range(3)]
    recs += [record({"roi.op": "pool"}, s, 0.45 + 0.012 * s) for s in range(3)]
    recs += [record({"roi.op": "pool"}, 3, 0.1, env={**ENV, "cpu": "other"})]
    grids = {"roi_op": [{"roi.op": "align_grid"}, {"roi.op": "pool"}]}
    questions = {"roi_op": {"expected": "align wins",
                            "checks": [{"claim": "c", "metric": "map", "higher": {"roi.op": "align_grid"},
                                        "than": {"roi.op": "pool"}}]}}
    md = build_report(runs_from_records(recs), grids, questions, BASE, {}, {}, tmp_path, "records")
    assert "cpu X (AVX2), float32 training" in md and "1 run(s) from other environments" in md
    assert f"Budget: {BASE['train']['max_steps']} training steps" in md
    assert "| roi.op=pool | 3 | 0.4620 ± 0.0120 |" in md
    assert "**confirmed**" in md
    assert "AlexNet" in md and "VGG16" in md and "not measured here" in md
    assert (tmp_path / "ablations" / "roi_op.png").stat().st_size > 0
    assert (tmp_path / "ablations.csv").read_text().count("\n") == 3  # header + 2 settings
    with pytest.raises(ValueError, match="no evaluated runs"):
        build_report([], grids, questions, BASE, {}, {}, tmp_path, "nothing")


def test_runs_are_read_back_from_an_mlflow_store_with_their_params(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("frcnn", artifact_location=str(tmp_path / "art"))
    for setting, m in (({}, 0.5), ({"anchors.scales": [64, 128, 256]}, 0.45)):
        cfg = config_from_dict(BASE, setting)
        run = client.create_run(exp, tags={"host": "h", "torch": "2"})
        for k, v in cfg.flat().items():
            client.log_param(run.info.run_id, k, param_value(v))
        client.log_metric(run.info.run_id, "map", m)
        client.log_metric(run.info.run_id, "errors.localisation", 0.03)
    client.create_run(exp)  # trained, never evaluated
    runs = runs_from_mlflow(uri, "frcnn")
    assert len(runs) == 2
    rows = question_table(runs, BASE, [{"anchors.scales": [64, 128, 256]}], {}, {})
    assert rows[0]["n"] == 1 and rows[0]["map_mean"] == 0.45
    assert runs[0]["errors"]["delta_ap50"]["localisation"] == 0.03


def test_varied_params_ignores_the_seed():
    base = config_from_dict({}).to_dict()
    cur = config_from_dict({}, {"loss.lambda": 10.0, "seed": 3}).to_dict()
    assert varied_params(cur, base) == {"loss.lambda": 10.0}
    assert json.loads(timing_key(BASE, {}, {"loss.lambda": 5.0})) == {}


def test_env_filter_reports_the_named_environment_and_refuses_an_unknown_one(tmp_path):
    other = {**ENV, "cpu": "AMD EPYC"}
    recs = [record({}, s, 0.5 + 0.01 * s) for s in range(3)]          # 3 runs on cpu X
    recs += [record({}, s, 0.3 + 0.01 * s, env=other) for s in range(2)]  # 2 on AMD EPYC
    grids = {"roi_op": [{"roi.op": "align_grid"}, {"roi.op": "pool"}]}
    questions = {"roi_op": {"expected": "e", "checks": []}}
    runs = runs_from_records(recs)
    md = build_report(runs, grids, questions, BASE, {}, {}, tmp_path, "records")
    assert "cpu X (AVX2)" in md and "2 run(s) from other environments" in md
    assert "AMD EPYC (AVX2), float32 training, torch 2, 2 threads: 2" in md  # names the left-out env
    md = build_report(runs, grids, questions, BASE, {}, {}, tmp_path, "records", env_filter="amd")
    assert "AMD EPYC (AVX2)" in md and "3 run(s) from other environments" in md
    assert "0.3050" in md  # the AMD baseline's mean, not cpu X's 0.5100
    with pytest.raises(ValueError, match="--env sparc: no runs from such an environment"):
        build_report(runs, grids, questions, BASE, {}, {}, tmp_path, "records", env_filter="sparc")


def test_records_older_than_a_knob_match_todays_baseline():
    rec = record({}, 0, 0.5)
    del rec["params"]["train"]["nonfinite_patience"]  # a record written before the knob existed
    del rec["params"]["model"]["frozen_bn"]
    (run,) = runs_from_records([rec])
    expected = config_from_dict(BASE, {"seed": 0}).to_dict()
    del expected["tracking"]  # only what is logged: not part of a run's setting
    assert run["params"] == expected | {"model": run["params"]["model"]}
    assert run["params"]["train"]["nonfinite_patience"] == BASE["train"]["nonfinite_patience"]
    rec["params"]["model"]["no_such_knob"] = 1  # a knob this code no longer has: left out
    assert runs_from_records([rec]) == []


def test_what_a_run_logs_does_not_split_a_setting():
    """A baseline recorded before `frcnn ablate` turned tracking.log_model off (the key missing,
    so the default true) pairs with later ones (false): the same setting, 3 seeds."""
    old = record({}, 0, 0.50)
    del old["params"]["tracking"]["log_model"]
    recs = [old] + [record({"tracking.log_model": False}, s, 0.5 + s / 100) for s in (1, 2)]
    recs.append(record({"loss.lambda": 10.0, "tracking.log_model": False}, 0, 0.6))
    for extra in ({}, {"tracking.log_model": False}):
        base, ten = question_table(runs_from_records(recs), BASE, [{}, {"loss.lambda": 10.0}],
                                   extra, {})
        assert base["n"] == 3 and base["map_mean"] == pytest.approx(0.51)
        assert ten["n"] == 1 and ten["map_delta"]["mean"] == pytest.approx(0.1)

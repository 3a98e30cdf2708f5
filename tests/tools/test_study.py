"""The study runner: planning from the shipped grids, content keys, the numerics fingerprint, and a
real two-run study on the tiny project that records, skips what is recorded and reruns what is not."""

import json
import os

import pytest
import yaml

from frcnn.config import ConfigError, config_from_dict
from frcnn.tools.study import (
    StudyPaths,
    data_digest,
    environment,
    fingerprint,
    load_records,
    load_study_file,
    plan_study,
    run_key,
    run_study,
)
from tests.tiny_project import REPO, build_project

BASE = yaml.safe_load((REPO / "params.yaml").read_text())


def test_the_shipped_grids_plan_one_baseline_per_seed_and_every_other_setting():
    grids, test_only = load_study_file(REPO / "ablations.yaml")
    runs = plan_study(grids, BASE, None, seeds=3)
    names = [r.name for r in runs]
    assert names[:3] == ["baseline-default-s0", "baseline-default-s1", "baseline-default-s2"]
    assert len(names) == len(set(names))
    # every grid holds the baseline; it is planned once, not once per grid
    assert sum(r.is_baseline for r in runs) == 3
    non_default = sum(1 for g in grids.values() for s in g
                      if config_from_dict(BASE, s).to_dict() != config_from_dict(BASE).to_dict())
    assert len(runs) == 3 * (1 + non_default)
    pool = next(r for r in runs if r.name == "roi_op-pool-s1")
    assert pool.params["roi"]["op"] == "pool" and pool.params["seed"] == 1
    assert pool.dvc_command() == "dvc exp run -n roi_op-pool-s1 -S roi.op=pool -S seed=1"
    anchors = next(r for r in runs if r.name.startswith("anchor_scales-px_64"))
    assert "-S anchors.scales=[64,128,256]" in anchors.dvc_command()
    assert "rpn.nms_thresh" in test_only


def test_a_budget_applies_to_every_run_and_data_keys_are_refused():
    grids = {"lambda": [{"loss.lambda": 1.0}, {"loss.lambda": 5.0}]}
    runs = plan_study(grids, BASE, "lambda", 1, {"train.max_steps": 900})
    assert [r.name for r in runs] == ["baseline-default-s0", "lambda-1.0-s0"]
    assert all(r.params["train"]["max_steps"] == 900 for r in runs)
    assert "-S train.max_steps=900" in runs[0].dvc_command()
    with pytest.raises(ConfigError, match=r"augment\.copies: a study run reuses the workspace's data"):
        plan_study({"x": [{"augment.copies": 2}]}, BASE, None, 1)
    with pytest.raises(ConfigError, match="unknown grid"):
        plan_study(grids, BASE, "nope", 1)


def test_test_only_keys_must_be_inference_knobs(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("grids:\n  x:\n    - {loss.lambda: 1}\ntest_only:\n  loss.lambda: [2]\n")
    with pytest.raises(ConfigError, match=r"test_only\.loss\.lambda: not an inference-only key"):
        load_study_file(f)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = build_project(tmp_path_factory.mktemp("study"))
    os.symlink(REPO / "stages", root / "stages")
    return root


def _cfg(project, **overrides):
    return config_from_dict(yaml.safe_load((project / "params.yaml").read_text()), overrides)


def test_the_fingerprint_follows_the_numbers_not_the_params_text(project):
    train, test = project / "data/augmented/trainval.json", project / "data/processed/test.json"
    fp = fingerprint(_cfg(project), train, test)
    assert fp == fingerprint(_cfg(project), train, test)  # deterministic
    assert fp != fingerprint(_cfg(project, **{"loss.lambda": 1.0}), train, test)
    assert fp != fingerprint(_cfg(project, **{"roi.op": "pool"}), train, test)
    # a key that changes no number computed in training or detection
    assert fp == fingerprint(_cfg(project, **{"eval.num_preview": 1}), train, test)


def test_the_key_covers_params_data_code_and_environment(project):
    cfg = _cfg(project)
    env = environment(cfg)
    assert env["train_precision"] == "float32" and env["threads"] >= 1  # tiny params: amp off
    key = run_key(cfg.to_dict(), "d", "f", env)
    assert key == run_key(cfg.to_dict(), "d", "f", dict(env))
    assert key != run_key(_cfg(project, seed=1).to_dict(), "d", "f", env)
    assert key != run_key(cfg.to_dict(), "d2", "f", env)
    assert key != run_key(cfg.to_dict(), "d", "f2", env)
    assert key != run_key(cfg.to_dict(), "d", "f", {**env, "train_precision": "bfloat16"})
    # what is only logged is not what a run computes: the study turns model logging off
    quiet = cfg.to_dict()
    quiet["tracking"]["log_model"] = not quiet["tracking"]["log_model"]
    assert run_key(quiet, "d", "f", env) == key
    no_section = {k: v for k, v in cfg.to_dict().items() if k != "tracking"}
    assert run_key(no_section, "d", "f", env) == key
    # a record made before a knob existed (its params lack the key, or hold what its automatic
    # default resolves to) is the same run; a knob the code no longer has is refused
    older = cfg.to_dict()
    del older["model"]["min_size_train"], older["train"]["nonfinite_patience"]
    older["model"]["frozen_bn"] = False  # null resolves to false without ImageNet weights
    assert run_key(older, "d", "f", env) == key
    assert run_key({**older, "model": {**older["model"], "frozen_bn": True}}, "d", "f", env) != key
    with pytest.raises(ConfigError, match="unknown key"):
        run_key({**older, "model": {**older["model"], "gone": 1}}, "d", "f", env)
    splits = [project / "data/augmented/trainval.json", project / "data/processed/test.json"]
    assert data_digest(splits) == data_digest(splits)
    assert data_digest(splits[:1]) != data_digest(splits)


def test_a_study_records_each_run_skips_recorded_ones_and_reruns_a_deleted_one(project, tmp_path):
    base = yaml.safe_load((project / "params.yaml").read_text())
    runs = plan_study({"lambda": [{"loss.lambda": 1.0}]}, base, None, 1)
    paths = StudyPaths(project=project, train_json=project / "data/augmented/trainval.json",
                       test_json=project / "data/processed/test.json",
                       backbone=project / "models/backbone.pt", records=tmp_path / "records",
                       workdir=tmp_path / "runs")
    log = []
    written = run_study(runs, paths, echo=log.append)
    assert [p.name.rsplit("-", 1)[0] for p in written] == ["baseline-default-s0", "lambda-1.0-s0"]
    records = load_records(paths.records)
    by_name = {r["name"]: r for r in records}
    for rec in records:
        run_dir = paths.workdir / f"{rec['name']}-{rec['key'][:12]}"
        assert rec["metrics"] == json.loads((run_dir / "eval" / "metrics.json").read_text())
        assert rec["train"]["steps"] == 2
        assert rec["params"]["seed"] == 0 and rec["environment"]["torch"]
    assert by_name["lambda-1.0-s0"]["params"]["loss"]["lambda"] == 1.0
    assert by_name["baseline-default-s0"]["baseline"] is True
    assert by_name["lambda-1.0-s0"]["key"] != by_name["baseline-default-s0"]["key"]

    assert run_study(runs, paths, echo=log.append) == []
    assert sum("skipped" in line for line in log) == 2
    os.remove(by_name["lambda-1.0-s0"]["_path"])
    again = run_study(runs, paths, echo=log.append)
    assert [p.name for p in again] == [os.path.basename(by_name["lambda-1.0-s0"]["_path"])]
    # deterministic: the rerun's numbers are the recorded ones
    rerun = {r["name"]: r for r in load_records(paths.records)}["lambda-1.0-s0"]
    assert rerun["metrics"] == by_name["lambda-1.0-s0"]["metrics"]


def test_a_broken_record_is_named(tmp_path):
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(ConfigError, match=r"x\.json: not a study record"):
        load_records(tmp_path)


def test_timing_trains_each_distinct_setting_once_for_the_given_steps(project, tmp_path):
    from frcnn.tools.ablation import timing_key
    from frcnn.tools.study import time_settings

    base = yaml.safe_load((project / "params.yaml").read_text())
    grids = {"roi_size": [{"roi.output_size": 5}, {"roi.output_size": 7}]}
    runs = plan_study(grids, base, None, 2)
    paths = StudyPaths(project=project, train_json=project / "data/augmented/trainval.json",
                       test_json=project / "data/processed/test.json",
                       backbone=project / "models/backbone.pt", records=tmp_path / "r",
                       workdir=tmp_path / "w")
    out = time_settings(runs, paths, base, steps=2, echo=lambda _: None)
    assert out["steps"] == 2 and set(out["settings"]) == {
        timing_key(base, {}, {}), timing_key(base, {}, {"roi.output_size": 5})}
    assert all(r["step_seconds"] > 0 and r["images_per_s"] > 0 for r in out["settings"].values())

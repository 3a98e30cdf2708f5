"""The benchmarks package: an equal torchvision peer, ratios, alternation, the report files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks.bench import machine_info, write_report
from benchmarks.bench_evaluation import synthetic_eval_set
from benchmarks.peer import SIZES, bench_config, build_pair, make_inputs
from benchmarks.timing import alternate, format_record, make_infer, make_train_step, ratio_record
from frcnn.model.faster_rcnn import count_parameters

SMALL = "resnet18_c4 256"


@pytest.fixture(scope="module")
def pair():
    return build_pair(SMALL)


def test_peer_has_same_parameter_count_and_weights(pair):
    ours, tv, cfg = pair
    assert count_parameters(ours) == count_parameters(tv)
    assert cfg.rpn.hidden_channels == 256 and cfg.rpn.border_tolerance < 0
    for a, b in zip(ours.state_dict().values(), tv.state_dict().values()):
        assert a.shape == b.shape and torch.equal(a, b)
    gen = tv.rpn.anchor_generator
    assert gen.sizes == ((24.0, 48.0, 96.0, 192.0),) and gen.aspect_ratios == ((0.5, 1.0, 2.0),)
    r = cfg.rpn
    assert tv.rpn._pre_nms_top_n == {"training": r.pre_nms_top_n_train, "testing": r.pre_nms_top_n_test}
    assert tv.rpn._post_nms_top_n == {"training": r.post_nms_top_n_train,
                                      "testing": r.post_nms_top_n_test}
    assert tv.roi_heads.fg_bg_sampler.batch_size_per_image == cfg.roi.batch_size_per_image
    assert tv.transform.min_size == (256,) and tv.transform.max_size == 320
    assert tv.transform.size_divisible == 16


def test_resnet50_config_matches_channels():
    cfg = bench_config("resnet50 600")
    assert cfg.model.backbone == "resnet50" and cfg.rpn.hidden_channels == 2048
    assert (cfg.model.min_size, cfg.model.max_size) == (600, 1000)
    assert SIZES["resnet50 600"]["image"] == (375, 500)


def test_both_models_train_and_infer_on_the_same_inputs(pair):
    ours, tv, _ = pair
    images, targets = make_inputs(SMALL, 1)
    for model in (ours, tv):
        make_train_step(model, images, targets)()
        make_infer(model, images)()
        model.eval()
        with torch.inference_mode():
            det = model(images)[0]
        assert det["boxes"].shape[1] == 4


def test_ratio_and_alternation():
    rec = ratio_record("train_step", SMALL, [1.0, 3.0, 2.0], [4.0, 4.0, 1.0])
    assert rec["ours"] == 2.0 and rec["torchvision"] == 4.0 and rec["ratio"] == 0.5
    assert rec["ratio_paired"] == 0.75  # median of 1/4, 3/4, 2/1
    assert format_record(rec) == ("train_step resnet18_c4 256: ours 2.000 s, torchvision 4.000 s, "
                                  "ratio 0.50 (paired 0.75, 3 rounds)")
    thr = ratio_record("throughput_b8", SMALL, [2.0], [4.0], unit="images/s", per=8)
    assert thr["ours"] == 4.0 and thr["torchvision"] == 2.0 and thr["ratio"] == 0.5
    order = []
    times = alternate({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                      warmup=1, repeats=2)
    assert order == ["a", "b"] * 3 and len(times["a"]) == len(times["b"]) == 2


def test_report_has_stamps(tmp_path: Path):
    meta = {**machine_info(), "quick": True, "seconds": 1.0}
    recs = [ratio_record("train_step", SMALL, [1.0], [2.0], device="cpu"),
            {"figure": "eval_time", "size": "5000 images", "unit": "s", "skipped": "not yet"}]
    sizes = [{"size": SMALL, "params_ours": 10, "params_torchvision": 10, "trainable_ours": 10,
              "trainable_torchvision": 10}]
    md, js = write_report(recs, meta, sizes, tmp_path)
    text = md.read_text()
    assert f"torch.get_num_threads() = {torch.get_num_threads()}" in text
    assert torch.__version__ in text and "| train_step | resnet18_c4 256 | cpu |" in text
    assert "skipped: not yet" in text
    assert ("CPU only" in text) != torch.cuda.is_available()
    data = json.loads(js.read_text())
    assert data["meta"]["threads"] == torch.get_num_threads()
    assert data["meta"]["versions"]["torchvision"] and data["records"][0]["ratio"] == 0.5


def test_synthetic_result_set_is_voc_sized():
    gt, results = synthetic_eval_set(200)
    assert 400 < len(gt["annotations"]) < 800 and len(results) > len(gt["annotations"])
    ids = {im["id"] for im in gt["images"]}
    assert all(r["image_id"] in ids for r in results)


def test_train_peer_trains_torchvisions_model_on_the_project_data(tmp_path: Path):
    """benchmarks/train_peer.py end to end on a tiny project: trains, scores, writes its JSON."""
    import subprocess
    import sys

    from tiny_project import REPO, build_project

    root = build_project(tmp_path / "project")
    (root / "reports" / "metrics.json").write_text(json.dumps({"map": 0.1, "ap50": 0.2, "ap75": 0.05,
                                                              "voc07_ap50": 0.2}))
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_peer.py"), "--steps", "2"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    peer = json.loads((root / "reports" / "peer_accuracy.json").read_text())
    assert peer["steps"] == 2 and 0.0 <= peer["ap50"] <= 1.0 and 0.0 <= peer["map"] <= peer["ap50"]
    assert "torchvision" in done.stdout and "ours 0.200" in done.stdout
    # without the pipeline's data it says what to run instead of a traceback
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "params.yaml").write_text((root / "params.yaml").read_text())
    missing = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_peer.py")], cwd=empty,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "run `dvc repro` first" in missing.stderr


class FakeClock:
    """time.perf_counter for `interleaved`: each callable advances it by the seconds it is given."""

    def __init__(self):
        self.now = 0.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def work(self, name: str, seconds):
        it = iter(seconds) if not isinstance(seconds, float) else None

        def fn():
            self.calls.append(name)
            self.now += next(it) if it is not None else seconds
        return fn


def test_the_instrument_stops_once_precise_and_states_the_noise_floor(monkeypatch):
    import itertools
    import random

    from benchmarks import timing

    clock = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    fns = {"ours": clock.work("ours", 1.1), "tv": clock.work("tv", 1.0), "aa": clock.work("aa", 1.0)}
    times = timing.interleaved(fns, warmup=1, min_rounds=5, budget_s=1e9, precision=0.01)
    assert len(times["ours"]) == 5  # no spread at all: the interval is tight at the minimum
    rounds = [clock.calls[i:i + 3] for i in range(0, len(clock.calls), 3)]
    assert all(sorted(r) == ["aa", "ours", "tv"] for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # the order is shuffled from round to round
    rec = timing.instrument_record("train_step", SMALL, times)
    assert rec["ratio_paired"] == pytest.approx(1.1) and rec["ci95"] == pytest.approx([1.1, 1.1])
    assert rec["aa_ratio"] == pytest.approx(1.0) and rec["rounds"] == 5

    # noisy ratios: more rounds, until the budget; the interval then brackets the true 1.0
    rng = random.Random(1)
    clock = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    noisy = (1.0 + rng.uniform(-0.3, 0.3) for _ in itertools.count())
    fns = {"ours": clock.work("ours", noisy), "tv": clock.work("tv", 1.0)}
    times = timing.interleaved(fns, warmup=0, min_rounds=5, max_rounds=200, budget_s=80.0,
                               precision=0.001)
    assert 38 <= len(times["ours"]) <= 42  # ~80 s of timed rounds of ~2 s each
    lo, hi = timing.bootstrap_median_ci([o / t for o, t in zip(times["ours"], times["tv"])])
    assert lo < 1.0 < hi and hi - lo < 0.3
    # a spent budget still leaves the figure its minimum rounds
    times = timing.interleaved(fns, warmup=0, min_rounds=3, budget_s=0.0)
    assert len(times["ours"]) == 3


def test_bootstrap_interval_of_a_median():
    from benchmarks.timing import bootstrap_median_ci

    lo, hi = bootstrap_median_ci([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    assert 2.0 <= lo <= 5.0 <= hi <= 8.0
    assert bootstrap_median_ci([1.0, 2.0]) == bootstrap_median_ci([1.0, 2.0])  # seeded
    assert all(math.isnan(x) for x in bootstrap_median_ci([1.0]))  # one round: no interval (NaN)


def test_the_user_recipe_figures_keep_params_yaml_and_give_the_peer_the_same_switches(
        monkeypatch, tmp_path: Path):
    import benchmarks.bench_recipe as bench_recipe_module
    from benchmarks.bench_recipe import bench_recipe, recipe_configs
    from frcnn.config import load_config
    from frcnn.engine.device import autocast_dtype
    from tests.tiny_project import REPO, build_project

    # the evaluate figure reads the pipeline's test split: a tiny generated one here
    monkeypatch.setattr(bench_recipe_module, "TEST_SPLIT", tmp_path / "missing.json")

    base = load_config(REPO / "params.yaml")
    ours, peer = recipe_configs(base)
    assert ours.roi.op == base.roi.op and peer.roi.op == "align"  # torchvision's only RoIAlign
    assert {k: v for k, v in peer.flat().items() if k != "roi.op"} == {
        k: v for k, v in ours.flat().items() if k != "roi.op"}
    recs = bench_recipe(base, True, {"min_rounds": 1, "max_rounds": 1, "budget_s": 0.0})
    assert [r["figure"] for r in recs] == ["recipe_train_step", "recipe_infer_b1",
                                           "recipe_throughput_b8", "recipe_evaluate",
                                           "recipe_evaluate_opt_in"]
    assert all("missing.json: not found" in r["skipped"] for r in recs[-2:])
    project = build_project(tmp_path / "proj")
    monkeypatch.setattr(bench_recipe_module, "TEST_SPLIT", project / "data/processed/test.json")
    evaluate, opt_in = bench_recipe(base, True, {"min_rounds": 1, "max_rounds": 1,
                                                 "budget_s": 0.0})[-2:]
    for r in (evaluate, opt_in):
        assert r["unit"] == "images/s" and r["batch"] == base.eval.batch_size
        assert r["ours"] > 0 and r["torchvision"] > 0 and r["rounds"] == 1
    assert evaluate["figure"] == "recipe_evaluate" and "float32" in evaluate["size"]
    want = autocast_dtype(torch.device("cpu"), True)
    assert opt_in["figure"] == "recipe_evaluate_opt_in" and "channels-last" in opt_in["size"]
    assert ("bfloat16 autocast" in opt_in["size"]) == (want == torch.bfloat16)
    recs = recs[:-2]
    want = autocast_dtype(torch.device("cpu"), base.train.amp, base.train.amp_dtype)
    for r in recs:
        assert r["autocast"] == (str(want).replace("torch.", "") if want else "float32")
        assert r["ours"] > 0 and r["torchvision"] > 0 and r["aa_ratio"] > 0 and r["rounds"] == 1
    assert recs[0]["batch"] == base.train.batch_size

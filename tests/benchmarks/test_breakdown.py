"""benchmarks.breakdown: per-stage self times that add up, every stage found in both models."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from benchmarks.breakdown import (
    STAGES,
    StageTimer,
    count_flops,
    instrumented,
    markdown,
    stage_breakdown,
    stage_map,
    timed_infer,
    timed_train_step,
    write,
)
from benchmarks.peer import build_pair, make_inputs

SMALL = "resnet18_c4 256"


@pytest.fixture(scope="module")
def pair():
    ours, tv, _ = build_pair(SMALL)
    return ours, tv


def test_nested_scopes_give_self_times_that_add_up():
    timer = StageTimer()
    with timer.scope("outer"):
        time.sleep(0.02)
        with timer.scope("inner"):
            time.sleep(0.03)
        timed = timer.wrap("inner", lambda: time.sleep(0.01))
        timed()
    t = timer.reset()
    assert 0.019 < t["outer"] < 0.027 and 0.039 < t["inner"] < 0.048
    assert timer.totals == {}


@pytest.mark.parametrize("ours", [True, False])
def test_every_stage_callable_exists_and_is_put_back(pair, ours):
    model = pair[0] if ours else pair[1]
    triples = stage_map(model, ours)
    assert {s for s, _, _ in triples} <= set(STAGES)
    before = [(owner, attr, getattr(owner, attr)) for _, owner, attr in triples]
    timer = StageTimer()
    images, _ = make_inputs(SMALL, 1)
    with instrumented(timer, model, ours):
        timed_infer(model, images, timer, None)()
    for owner, attr, original in before:  # the very same objects again, no wrapper left behind
        assert getattr(owner, attr) == original
    assert "forward" not in vars(model.backbone) and "forward" not in vars(model.transform)


def test_breakdown_of_both_implementations(pair, tmp_path: Path):
    ours, tv = pair
    images, targets = make_inputs(SMALL, 2, seed=2)
    models = {"ours": (ours, True), "torchvision": (tv, False)}
    train = stage_breakdown(models, lambda m, t: timed_train_step(m, images, targets, t, None), 2)
    for name in models:
        stages = train[name]["stages_ms"]
        # every stage of a training step was seen, and the self times add up to the call
        assert {"transform", "trunk", "rpn_head", "proposals", "rpn_targets_loss", "roi_sampling",
                "roi_op", "box_head", "roi_loss", "backward", "optimizer"} <= set(stages)
        assert stages["backward"] > 0 and stages["trunk"] > 0
        assert abs(sum(stages.values()) - train[name]["total_ms"]) < 0.15 * train[name]["total_ms"]
    infer = stage_breakdown(models, lambda m, t: timed_infer(m, images[:1], t, None), 1)
    assert infer["ours"]["stages_ms"]["postprocess"] > 0
    assert "backward" not in infer["torchvision"]["stages_ms"]
    # the same network: the same FLOPs, and a training step counts its backward too
    f_ours = count_flops(timed_train_step(ours, images, targets, StageTimer(), None))
    f_tv = count_flops(timed_train_step(tv, images, targets, StageTimer(), None))
    f_inf = count_flops(timed_infer(ours, images[:1], StageTimer(), None))
    assert f_ours == f_tv and f_ours > 2 * f_inf > 0
    for rows in (train, infer):
        for r in rows.values():
            r.update({"gflop": 1.0, "achieved_gflops": 2.0, "fraction_of_peak": 0.1})
    result = {"machine": {"date": "d", "cpu": "c", "threads": 2, "git_commit": "g",
                          "versions": {"torch": torch.__version__, "torchvision": "tv"}},
              "quick": True, "peak_gflops": {"float32": {"matmul": 1, "conv3x3": 2, "peak": 2}},
              "settings": [{"label": "like for like: x", "batch_train": 2, "train_step": train,
                            "infer_b1": infer}]}
    write(result, tmp_path)
    assert json.loads((tmp_path / "breakdown.json").read_text())["settings"][0]["label"]
    text = (tmp_path / "breakdown.md").read_text()
    assert "| backward |" in text and "**whole call**" in text and text == markdown(result)
    assert (tmp_path / "breakdown.png").stat().st_size > 1000

"""What a user runs: our default recipe against torchvision's detector with the same speed-ups.

The like-for-like figures of `benchmarks.bench` give both sides torchvision's RoIAlign kernel and
float32. A user of `make repro` runs params.yaml as committed instead: `roi.op: align_grid` (our
grid_sample RoIAlign), the model in channels-last memory format (frcnn.engine.trainer) and
`train.amp` (bfloat16 autocast on a CPU that runs it natively, float32 elsewhere). Here the peer is
torchvision's `FasterRCNN` given the same trunk, anchors, sizes and weights (`benchmarks.peer`,
torchvision's own RoIAlign kernel, the only one it has) and the same switches a user could turn on
there: channels-last and the same autocast dtype. Figures: a training step at the recipe's batch
size, inference at batch 1 and batch 8, as ratios ours / torchvision with their bootstrap
interval and the A/A noise floor (`benchmarks.timing.interleaved`).

What differs by design, and so counts in the ratio: our RoI op, and our rule that ignores anchors
crossing the image border in RPN training (`rpn.border_tolerance`; torchvision has none, it matches
every anchor), both as the user's params.yaml has them.
"""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.peer import (
    SIZES,
    build_torchvision_peer,
    calibrate_batchnorm,
    make_inputs,
)
from benchmarks.timing import (
    emit,
    instrument_record,
    interleaved,
    make_infer,
    make_train_step,
)
from frcnn.config import Config, config_from_dict
from frcnn.engine.device import autocast_dtype
from frcnn.model.build import build_model

SIZE = "resnet18_c4 256"  # the embedded data's image size and the default trunk


def recipe_configs(base: Config) -> tuple[Config, Config]:
    """(ours, the peer's): params.yaml as the user has it, random weights (no download), and the
    peer's copy with the only RoI op torchvision has."""
    ours = config_from_dict(base.to_dict(), {"model.pretrained": False})
    peer = config_from_dict(ours.to_dict(), {"roi.op": "align", "roi.head": "mlp"})
    return ours, peer


def recipe_models(cfg: Config, peer_cfg: Config, peers: int = 1) -> tuple[nn.Module, ...]:
    """(ours, peer, ...): the recipe's model with random weights (seed 0, BatchNorm calibrated)
    and `peers` torchvision twins of it, all channels-last as frcnn.engine.trainer trains."""
    torch.manual_seed(0)
    ours = build_model(cfg, num_classes=SIZES[SIZE]["num_classes"])
    calibrate_batchnorm(ours, make_inputs(SIZE, 2, seed=100)[0])
    models = (ours, *(build_torchvision_peer(peer_cfg, ours) for _ in range(peers)))
    for m in models:
        m.to(memory_format=torch.channels_last)
    return models


def bench_recipe(base: Config, quick: bool, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The three "what a user runs" figures on the CPU; [] with a skip record if the recipe
    cannot have a torchvision twin (roi.op pool, roi.head avg)."""
    records: list[dict[str, Any]] = []
    cfg, peer_cfg = recipe_configs(base)
    tag = {"device": "cpu", "threads": torch.get_num_threads(), "comparison": "user recipe"}
    if cfg.roi.op == "pool" or cfg.roi.head != "mlp":
        emit(records, {"figure": "recipe_train_step", "size": SIZE, "unit": "s", **tag,
                       "skipped": f"roi.op {cfg.roi.op} / roi.head {cfg.roi.head}: no torchvision twin"})
        return records
    dtype = autocast_dtype(torch.device("cpu"), cfg.train.amp, cfg.train.amp_dtype)
    tag["autocast"] = str(dtype).replace("torch.", "") if dtype is not None else "float32"
    ours, tv, aa = recipe_models(cfg, peer_cfg, peers=2)
    models = (("ours", ours), ("tv", tv), ("aa", aa))
    label = f"{SIZE}, params.yaml ({cfg.roi.op}, {tag['autocast']}, channels-last)"

    batch = cfg.train.batch_size
    images, targets = make_inputs(SIZE, batch, seed=2)
    steps = {k: make_train_step(m, images, targets, dtype=dtype) for k, m in models}
    emit(records, instrument_record("recipe_train_step", label, interleaved(steps, **plan),
                                    batch=batch, **tag))
    del steps
    gc.collect()
    for figure, n in (("recipe_infer_b1", 1), ("recipe_throughput_b8", 8)):
        batch_images = make_inputs(SIZE, n, seed=3)[0]
        fns = {k: make_infer(m, batch_images, dtype=dtype) for k, m in models}
        unit = "images/s" if n > 1 else "s"
        emit(records, instrument_record(figure, label, interleaved(fns, **plan), unit=unit, per=n,
                                        batch=n, **tag))
    emit(records, evaluate_figure(cfg, models, plan, quick))
    # the opt-in inference speed-ups (eval.amp, eval.channels_last), for both alike
    opt_in = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, amp=True,
                                                               channels_last=True))
    emit(records, evaluate_figure(opt_in, models, plan, quick, figure="recipe_evaluate_opt_in"))
    return records


TEST_SPLIT = Path("data/processed/test.json")


def evaluate_figure(cfg: Config, models: tuple[tuple[str, nn.Module], ...], plan: dict[str, Any],
                    quick: bool, split: Path | None = None, figure: str = "recipe_evaluate"
                    ) -> dict[str, Any]:
    """`frcnn evaluate`'s inference, end to end: the test split's loader (decoding included) at
    `eval.batch_size` through `frcnn.engine.inference.predict` with `eval.amp` /
    `eval.channels_last` as params.yaml has them (float32, contiguous weights by default), for
    ours and the peer alike; images/s over the first 16 (--quick) or 128 test images. Skipped
    without the pipeline's data (`dvc repro preprocess`)."""
    from frcnn.data.dataset import DetectionDataset, collate_fn
    from frcnn.engine.inference import predict

    amp_dtype = autocast_dtype(torch.device("cpu"), cfg.eval.amp)
    precision = (f"{str(amp_dtype).removeprefix('torch.')} autocast (eval.amp)" if amp_dtype
                 else "float32" + (" (eval.amp: no native bfloat16 here)" if cfg.eval.amp else ""))
    label = (f"{SIZE}, the test split, eval.batch_size {cfg.eval.batch_size}, {precision}"
             + (", channels-last" if cfg.eval.channels_last else ""))
    tag = {"device": "cpu", "threads": torch.get_num_threads(), "comparison": "user recipe"}
    split = TEST_SPLIT if split is None else split
    if not split.is_file():
        return {"figure": figure, "size": label, "unit": "images/s", **tag,
                "skipped": f"{split}: not found (run `dvc repro preprocess` first)"}
    data = DetectionDataset(split, train=False, include_difficult=True)
    n = min(len(data), 16 if quick else 128)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, range(n)),
                                         batch_size=cfg.eval.batch_size, collate_fn=collate_fn,
                                         num_workers=cfg.train.num_workers)
    for _, m in models:  # what evaluate runs: the weights as trained, unless eval.channels_last
        m.to(memory_format=torch.contiguous_format)

    def run(model: nn.Module):
        def evaluate() -> None:
            for _ in predict(model, loader, torch.device("cpu"), progress=False,
                             amp=cfg.eval.amp, channels_last=cfg.eval.channels_last):
                pass
        return evaluate

    fns = {k: run(m) for k, m in models}
    plan = {**plan, "min_rounds": 3, "budget_s": plan["budget_s"] * (1 if quick else 4)}
    return instrument_record(figure, label, interleaved(fns, **plan), unit="images/s",
                             per=n, batch=cfg.eval.batch_size, **tag)

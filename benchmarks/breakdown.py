"""Where a step's time goes, and how far it is from what this CPU can do.

`python benchmarks/breakdown.py [--quick] [--out reports]` writes `breakdown.{json,md,png}`:

1. **Per-stage wall time** of a training step (batch 2) and of an inference (batch 1), for ours
   and for torchvision's detector built to be the same network (`benchmarks.peer`), at three
   settings: what a user runs (params.yaml's recipe: align_grid, bfloat16 autocast where the
   CPU has it, channels-last; the peer with the same switches), like for like at the default
   size (resnet18_c4 256, float32, torchvision's RoIAlign on both sides) and the reference
   design's resnet50 at 600 px. Stages are timed by wrapping each implementation's own modules
   and methods (`STAGE_MAP`): a stage's time is its *self* time, without the time of the stages
   it calls, so the stages add up to the step. Rounds alternate ours and torchvision; each
   stage's figure is its median over the rounds.
2. **FLOPs** of each step (`torch.utils.flop_counter.FlopCounterMode`: matmuls, convolutions
   and their backward; element-wise ops are not counted) and the step's achieved GFLOP/s,
   against this CPU's measured dense peak (`peak_gflops`: the best of a large matmul and of a
   3x3 convolution, in float32 and in bfloat16) — how far from the hardware limit each is.

On CPU only, like `frcnn bench`: the same thread count and OMP wait policy for both sides.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from benchmarks.peer import (
    build_pair,
    make_inputs,
)
from benchmarks.timing import _autocast
from frcnn.config import Config

# the stages, in the order a step runs them
STAGES = ("transform", "trunk", "rpn_head", "anchors", "proposals", "rpn_targets_loss",
          "rpn_other", "roi_sampling", "roi_op", "box_head", "roi_loss", "postprocess",
          "roi_other", "backward", "optimizer", "other")


class StageTimer:
    """Self time per stage name: nested scopes subtract from their parent, so stages add up."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[list[Any]] = []

    def enter(self, name: str) -> None:
        self._stack.append([name, time.perf_counter(), 0.0])

    def exit(self) -> None:
        name, t0, inner = self._stack.pop()
        elapsed = time.perf_counter() - t0
        self.totals[name] += elapsed - inner
        if self._stack:
            self._stack[-1][2] += elapsed

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        self.enter(name)
        try:
            yield
        finally:
            self.exit()

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.scope(name):
                return fn(*args, **kwargs)
        return timed

    def reset(self) -> dict[str, float]:
        out, self.totals = dict(self.totals), defaultdict(float)
        return out


def stage_map(model: nn.Module, ours: bool) -> list[tuple[str, Any, str]]:
    """(stage, object, attribute) triples: the callables of each implementation that make a stage.

    Ours: frcnn.model (transform, backbone, rpn.{head, anchor_generator, propose, loss},
    roi_heads.{sample, pool, box_head, predictor, postprocess}, fast_rcnn_loss). torchvision's:
    GeneralizedRCNN's transform and backbone, RegionProposalNetwork's head, anchor_generator,
    box_coder.decode + filter_proposals, assign_targets_to_anchors + box_coder.encode +
    compute_loss, RoIHeads' select_training_samples, box_roi_pool, box_head, box_predictor,
    postprocess_detections and the module function fastrcnn_loss."""
    rpn, roi = model.rpn, model.roi_heads
    if ours:
        import frcnn.model.roi_heads as roi_module

        return [("other", model, "forward"), ("transform", model.transform, "forward"),
                ("postprocess", model.transform, "postprocess"),
                ("trunk", model.backbone, "forward"),
                ("rpn_other", rpn, "forward"), ("rpn_head", rpn.head, "forward"),
                ("anchors", rpn, "anchor_generator"), ("proposals", rpn, "propose"),
                ("rpn_targets_loss", rpn, "loss"),
                ("roi_other", roi, "forward"), ("roi_sampling", roi, "sample"),
                ("roi_op", roi, "pool"), ("box_head", roi.box_head, "forward"),
                ("box_head", roi.predictor, "forward"), ("roi_loss", roi_module, "fast_rcnn_loss"),
                ("postprocess", roi, "postprocess")]
    import torchvision.models.detection.roi_heads as tv_roi_module

    return [("other", model, "forward"), ("transform", model.transform, "forward"),
            ("postprocess", model.transform, "postprocess"),
            ("trunk", model.backbone, "forward"),
            ("rpn_other", rpn, "forward"), ("rpn_head", rpn.head, "forward"),
            ("anchors", rpn.anchor_generator, "forward"),
            ("proposals", rpn.box_coder, "decode"), ("proposals", rpn, "filter_proposals"),
            ("rpn_targets_loss", rpn, "assign_targets_to_anchors"),
            ("rpn_targets_loss", rpn.box_coder, "encode"),
            ("rpn_targets_loss", rpn, "compute_loss"),
            ("roi_other", roi, "forward"), ("roi_sampling", roi, "select_training_samples"),
            ("roi_op", roi, "box_roi_pool"), ("box_head", roi, "box_head"),
            ("box_head", roi, "box_predictor"), ("roi_loss", tv_roi_module, "fastrcnn_loss"),
            ("postprocess", roi, "postprocess_detections")]


@contextlib.contextmanager
def instrumented(timer: StageTimer, model: nn.Module, ours: bool) -> Iterator[None]:
    """Wrap every callable of `stage_map` in a timer scope; put the originals back on exit.

    A submodule attribute (torchvision's `box_head`) is timed through its `forward`; a method, a
    callable attribute (our anchor generator) or a module function is replaced by a wrapper on
    its owner (an instance attribute for a method)."""
    undo: list[Callable[[], None]] = []
    try:
        for stage, owner, attr in stage_map(model, ours):
            target = getattr(owner, attr)
            if isinstance(target, nn.Module):
                owner, attr, target = target, "forward", target.forward
            had = attr in vars(owner)
            setattr(owner, attr, timer.wrap(stage, target))
            undo.append((lambda o=owner, a=attr, t=target, h=had:
                         setattr(o, a, t) if h else delattr(o, a)))
        yield
    finally:
        for fn in reversed(undo):
            fn()


def timed_train_step(model: nn.Module, images, targets, timer: StageTimer,
                     dtype: torch.dtype | None) -> Callable[[], None]:
    """benchmarks.timing.make_train_step with the loss sum, backward and optimizer step scoped."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-5, momentum=0.9, weight_decay=1e-4)

    def step() -> None:
        with timer.scope("other"):
            with _autocast("cpu", False, dtype):
                losses = model(images, targets)
            loss = sum(losses.values())
        with timer.scope("backward"):
            loss.backward()
        with timer.scope("optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step


def timed_infer(model: nn.Module, images, timer: StageTimer,
                dtype: torch.dtype | None) -> Callable[[], None]:
    model.eval()

    def infer() -> None:
        with timer.scope("other"), torch.inference_mode(), _autocast("cpu", False, dtype):
            model(images)

    return infer


def stage_breakdown(models: dict[str, tuple[nn.Module, bool]], make_fn, rounds: int
                    ) -> dict[str, dict[str, Any]]:
    """Run the models in rounds (after one warm-up round; a shuffled order per round), each call's
    stages timed;
    -> {name: {"stages_ms": {stage: median ms}, "total_ms": median ms of the whole call}}."""
    timer = StageTimer()
    per: dict[str, list[dict[str, float]]] = {k: [] for k in models}
    totals: dict[str, list[float]] = {k: [] for k in models}
    fns = {}
    for name, (model, ours) in models.items():
        fns[name] = make_fn(model, timer)
    rng = random.Random(0)
    for i in range(rounds + 1):
        order = list(models)
        rng.shuffle(order)  # a fixed order would hand the second model the first one's caches
        for name in order:
            model, ours = models[name]
            with instrumented(timer, model, ours):
                timer.reset()
                t0 = time.perf_counter()
                fns[name]()
                dt = time.perf_counter() - t0
                stages = timer.reset()
            if i:
                per[name].append(stages)
                totals[name].append(dt)
    out = {}
    for name, rows in per.items():
        out[name] = {"stages_ms": {s: round(1e3 * statistics.median(r.get(s, 0.0) for r in rows), 2)
                                   for s in STAGES if any(s in r for r in rows)},
                     "total_ms": round(1e3 * statistics.median(totals[name]), 2),
                     "rounds": len(rows)}
    return out


# ------------------------------------------------------------------ FLOPs and the CPU's peak


def count_flops(fn: Callable[[], None]) -> int:
    """FLOPs of one call of `fn` (torch.utils.flop_counter: matmul/conv forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _best_rate(fn: Callable[[], Any], flops: float, repeats: int) -> float:
    fn()
    best = min(_time(fn) for _ in range(repeats))
    return flops / best / 1e9


def _time(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def peak_gflops(repeats: int = 5) -> dict[str, dict[str, float]]:
    """This CPU's dense throughput (GFLOP/s, best of `repeats`) at the current thread count: a
    2048^3 matmul and a 3x3 256->256 convolution on 2x256x64x64 (channels-last), float32 and
    bfloat16 (the convolution under autocast, as the recipe runs it)."""
    out: dict[str, dict[str, float]] = {}
    n = 2048
    conv = nn.Conv2d(256, 256, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 256, 64, 64).to(memory_format=torch.channels_last)
    conv_flops = 2 * 2 * 256 * 256 * 9 * 64 * 64
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        with torch.inference_mode():
            mm = _best_rate(lambda a=a, b=b: a @ b, 2 * n ** 3, repeats)
            with _autocast("cpu", False, None if dtype == torch.float32 else dtype):
                cv = _best_rate(lambda: conv(x), conv_flops, repeats)
        name = str(dtype).removeprefix("torch.")
        out[name] = {"matmul": round(mm, 1), "conv3x3": round(cv, 1), "peak": round(max(mm, cv), 1)}
    return out


# ------------------------------------------------------------------ the settings


def settings(quick: bool, base: Config) -> list[dict[str, Any]]:
    """What is broken down: the user's recipe, like for like at 256 px and (not --quick) resnet50."""
    from benchmarks.bench_recipe import SIZE, recipe_configs, recipe_models
    from frcnn.engine.device import autocast_dtype

    out = []
    cfg, peer_cfg = recipe_configs(base)
    if cfg.roi.op != "pool" and cfg.roi.head == "mlp":
        dtype = autocast_dtype(torch.device("cpu"), cfg.train.amp, cfg.train.amp_dtype)
        ours, tv = recipe_models(cfg, peer_cfg)
        label = (f"user recipe: {SIZE}, {cfg.roi.op}, "
                 f"{str(dtype).removeprefix('torch.') if dtype else 'float32'}, channels-last")
        out.append({"label": label, "size": SIZE, "ours": ours, "tv": tv, "dtype": dtype,
                    "batch": cfg.train.batch_size})
    for size in [SIZE] + ([] if quick else ["resnet50 600"]):
        ours, tv, _ = build_pair(size, base)
        out.append({"label": f"like for like: {size}, align, float32", "size": size, "ours": ours,
                    "tv": tv, "dtype": None, "batch": 2})
    return out


def _train_fn(model, timer, *, images, targets, dtype):
    return timed_train_step(model, images, targets, timer, dtype)


def _infer_fn(model, timer, *, images, dtype):
    return timed_infer(model, images, timer, dtype)


def run(quick: bool, out_dir: Path, base: Config | None = None) -> dict[str, Any]:
    """Every setting's breakdown and FLOPs, the CPU's peak; writes `out_dir`/breakdown.*.
    `base`: params.yaml as loaded (default: ./params.yaml, or the defaults without one)."""
    from benchmarks.bench import machine_info
    from frcnn.config import config_from_dict, load_config

    if base is None:
        base = (load_config(Path("params.yaml")) if Path("params.yaml").is_file()
                else config_from_dict({}))

    result: dict[str, Any] = {"machine": machine_info(), "quick": quick,
                              "peak_gflops": peak_gflops(3 if quick else 5), "settings": []}
    print(f"peak GFLOP/s: {result['peak_gflops']}", flush=True)
    for s in settings(quick, base):
        big = s["size"].startswith("resnet50")
        rounds = (2 if big else 5) if quick else (4 if big else 15)
        images, targets = make_inputs(s["size"], s["batch"], seed=2)
        one = make_inputs(s["size"], 1, seed=3)[0]
        models = {"ours": (s["ours"], True), "torchvision": (s["tv"], False)}
        row: dict[str, Any] = {"label": s["label"], "batch_train": s["batch"]}
        for figure, make in (
                ("train_step", functools.partial(_train_fn, images=images, targets=targets,
                                                 dtype=s["dtype"])),
                ("infer_b1", functools.partial(_infer_fn, images=one, dtype=s["dtype"]))):
            row[figure] = stage_breakdown(models, make, rounds)
            precision = str(s["dtype"]).removeprefix("torch.") if s["dtype"] else "float32"
            peak = result["peak_gflops"][precision]["peak"]
            for name, (model, _) in models.items():
                flops = count_flops(make(model, StageTimer()))
                rate = flops / (row[figure][name]["total_ms"] / 1e3) / 1e9
                row[figure][name].update({"gflop": round(flops / 1e9, 2),
                                          "achieved_gflops": round(rate, 1),
                                          "fraction_of_peak": round(rate / peak, 3)})
            print(f"{s['label']} {figure}: ours {row[figure]['ours']['total_ms']:.0f} ms, "
                  f"torchvision {row[figure]['torchvision']['total_ms']:.0f} ms", flush=True)
        result["settings"].append(row)
        del s["ours"], s["tv"]
        gc.collect()
    write(result, out_dir)
    return result


# ------------------------------------------------------------------ the report


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = ["# Where the time goes: per-stage breakdown, FLOPs and this CPU's peak", "",
             (f"Written by `python benchmarks/breakdown.py{' --quick' if result['quick'] else ''}` on "
             f"{m['date']}: {m['cpu']}, {m['threads']} threads, torch {m['versions']['torch']}, "
             f"torchvision {m['versions']['torchvision']}, git {m['git_commit']}."), "",
             ("Each stage: median over rounds (ours and torchvision alternating) of its *self* wall "
             "time in ms, the time of the stages it calls excluded, so a column adds up to about "
             "the step (`other`: the model's own forward glue, the loss sum; `*_other`: the RPN's "
             "and RoI heads' glue outside the named stages). GFLOP: "
             "torch.utils.flop_counter (matmuls, convolutions and their backward). % of peak: the "
             "step's GFLOP/s against the measured dense peak of its precision below. One run on a "
             "2-core machine: read the columns for where the time is. The trunk is the same "
             "module (a copy of its weights) in both: its ratio is this run's noise floor for a "
             "stage."), "",
             "| peak GFLOP/s | matmul 2048³ | conv 3x3 256ch | peak |", "|---|---|---|---|"]
    for dtype, row in result["peak_gflops"].items():
        lines.append(f"| {dtype} | {row['matmul']} | {row['conv3x3']} | {row['peak']} |")
    for s in result["settings"]:
        for figure, what in (("train_step", f"training step, batch {s['batch_train']}"),
                             ("infer_b1", "inference, batch 1")):
            f = s[figure]
            lines += ["", f"## {s['label']}: {what}", "",
                      "| stage | ours ms | torchvision ms | ours / tv |", "|---|---|---|---|"]
            stages = [st for st in STAGES
                      if st in f["ours"]["stages_ms"] or st in f["torchvision"]["stages_ms"]]
            for st in stages:
                a = f["ours"]["stages_ms"].get(st, 0.0)
                b = f["torchvision"]["stages_ms"].get(st, 0.0)
                ratio = f"{a / b:.2f}" if b > 0.05 else "–"
                lines.append(f"| {st} | {a:.1f} | {b:.1f} | {ratio} |")
            a, b = f["ours"], f["torchvision"]
            lines.append(f"| **whole call** | **{a['total_ms']:.1f}** | **{b['total_ms']:.1f}** | "
                         f"**{a['total_ms'] / b['total_ms']:.2f}** |")
            lines.append(f"| GFLOP | {a['gflop']} | {b['gflop']} | |")
            lines.append(f"| achieved GFLOP/s (% of peak) | {a['achieved_gflops']} "
                         f"({100 * a['fraction_of_peak']:.0f} %) | {b['achieved_gflops']} "
                         f"({100 * b['fraction_of_peak']:.0f} %) | |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Stacked bars, one pair (ours, torchvision) per setting and figure: each stage's time as a
    percentage of torchvision's whole call, so a shorter bar is a faster implementation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars, labels = [], []
    for s in result["settings"]:
        short = (("recipe" if s["label"].startswith("user") else "like for like") + "\n"
                 + ("r50 600" if "resnet50" in s["label"] else "r18 256"))
        for figure, what in (("train_step", "train"), ("infer_b1", "infer b1")):
            tv_total = s[figure]["torchvision"]["total_ms"] or 1.0
            for name, who in (("ours", "ours"), ("torchvision", "tv")):
                bars.append({k: 100 * v / tv_total for k, v in s[figure][name]["stages_ms"].items()})
                labels.append(f"{short}\n{what}\n{who}")
    fig, ax = plt.subplots(figsize=(max(8, 1.0 * len(bars)), 6))
    cmap = plt.get_cmap("tab20")
    bottom = [0.0] * len(bars)
    for k, st in enumerate(STAGES):
        vals = [b.get(st, 0.0) for b in bars]
        if any(vals):
            ax.bar(range(len(bars)), vals, bottom=bottom, color=cmap(k % 20), label=st)
            bottom = [b + v for b, v in zip(bottom, vals)]
    ax.axhline(100, color="black", linewidth=0.6, linestyle=":")
    ax.set_xticks(range(len(bars)), labels, fontsize=7)
    ax.set_ylabel("% of torchvision's time for the same call")
    ax.set_title("Where the time goes, per stage (ours vs torchvision)")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write(result: dict[str, Any], out_dir: Path) -> None:
    from frcnn.fileio import atomic_write_json, atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "breakdown.json", result, indent=1)
    atomic_write_text(out_dir / "breakdown.md", markdown(result))
    plot(result, out_dir / "breakdown.png")
    print(f"-> {out_dir / 'breakdown.md'}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, no resnet50")
    parser.add_argument("--out", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)
    run(args.quick, args.out)


if __name__ == "__main__":
    main()

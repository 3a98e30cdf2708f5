"""Timing: one step of each kind, alternating timed rounds, and the records they give.

Each figure runs ours, torchvision, ours, torchvision, ... in one process, after warm-up, and
reports medians (`alternate`, `ratio_record`). On CUDA the rounds are timed with
`torch.cuda.synchronize`, with AMP off and on.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from typing import Any, Callable

import torch
from torch import nn


def _autocast(device: str, amp: bool):
    if amp and device == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def make_train_step(model: nn.Module, images, targets, device: str = "cpu", amp: bool = False
                    ) -> Callable[[], None]:
    """One forward + backward + SGD step (momentum, weight decay) on a fixed batch."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # lr small so that the weights (and hence the proposals) hardly drift between repeats
    opt = torch.optim.SGD(params, lr=1e-5, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda") if (amp and device == "cuda") else None

    def step() -> None:
        model.train()
        with _autocast(device, amp):
            losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    return step


def make_infer(model: nn.Module, images, device: str = "cpu", amp: bool = False
               ) -> Callable[[], None]:
    model.eval()

    def infer() -> None:
        model.eval()
        with torch.inference_mode(), _autocast(device, amp):
            model(images)

    return infer


def alternate(fns: dict[str, Callable[[], None]], warmup: int, repeats: int,
              sync: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Run the callables in turn (a, b, a, b, ...): `warmup` untimed rounds, then `repeats` timed."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def ratio_record(figure: str, size: str, ours: list[float], tv: list[float], unit: str = "s",
                 per: int = 1, **extra: Any) -> dict[str, Any]:
    """A figure's record: medians, ratio ours / torchvision (< 1: ours is faster/smaller).

    For `unit="images/s"` the lists are seconds per call of `per` images; the medians are turned
    into images/s but the ratio stays a ratio of times, so < 1 means ours is better everywhere.
    """
    mo, mt = statistics.median(ours), statistics.median(tv)
    # paired: ours_i / tv_i of the same round, robust to the load drifting during the run
    paired = statistics.median(o / t for o, t in zip(ours, tv)) if all(tv) else math.nan
    rec = {"figure": figure, "size": size, "unit": unit, "ratio": mo / mt if mt else math.nan,
           "ratio_paired": paired,
           "ours_samples": [round(x, 5) for x in ours], "tv_samples": [round(x, 5) for x in tv],
           **extra}
    if unit == "images/s":
        rec["ours"], rec["torchvision"] = per / mo, per / mt
    else:
        rec["ours"], rec["torchvision"] = mo, mt
    return rec


def format_record(rec: dict[str, Any]) -> str:
    """`train_step resnet18_c4 256: ours 0.93 s, torchvision 0.95 s, ratio 0.98`."""
    label = f"{rec['figure']} {rec['size']}"
    if rec.get("device", "cpu") != "cpu":
        label += f" {rec['device']}" + (" amp" if rec.get("amp") else "")
    if rec.get("skipped"):
        return f"{label}: skipped ({rec['skipped']})"
    unit = rec["unit"]
    if "torchvision" not in rec or rec.get("torchvision") is None:
        return f"{label}: ours {format_value(rec['ours'], unit)}"
    peer = rec.get("peer", "torchvision")
    line = (f"{label}: ours {format_value(rec['ours'], unit)}, "
            f"{peer} {format_value(rec['torchvision'], unit)}, ratio {rec['ratio']:.2f}")
    if rec.get("ratio_paired") is not None and len(rec.get("ours_samples", ())) > 1:
        line += f" (paired {rec['ratio_paired']:.2f})"
    return line


def format_value(x: float, unit: str) -> str:
    if unit == "s":
        return f"{x:.3f} s" if x < 10 else f"{x:.1f} s"
    if unit == "MiB":
        return f"{x:.0f} MiB"
    return f"{x:.1f} {unit}"


def emit(records: list[dict[str, Any]], new: list[dict[str, Any]] | dict[str, Any]) -> None:
    """Append the record(s) to `records` and print one line each."""
    for rec in new if isinstance(new, list) else [new]:
        records.append(rec)
        print(format_record(rec), flush=True)

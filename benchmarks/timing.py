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


def _autocast(device: str, amp: bool, dtype: torch.dtype | None = None):
    if dtype is not None:  # an explicit autocast dtype (bfloat16 on a CPU that has it)
        return torch.autocast(device, dtype=dtype)
    if amp and device == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def make_train_step(model: nn.Module, images, targets, device: str = "cpu", amp: bool = False,
                    dtype: torch.dtype | None = None) -> Callable[[], None]:
    """One forward + backward + SGD step (momentum, weight decay) on a fixed batch; `amp`: CUDA
    float16 autocast with loss scaling; `dtype`: autocast to that dtype instead (no scaling)."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # lr small so that the weights (and hence the proposals) hardly drift between repeats
    opt = torch.optim.SGD(params, lr=1e-5, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda") if (amp and device == "cuda" and dtype is None) else None

    def step() -> None:
        model.train()
        with _autocast(device, amp, dtype):
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


def make_infer(model: nn.Module, images, device: str = "cpu", amp: bool = False,
               dtype: torch.dtype | None = None) -> Callable[[], None]:
    model.eval()

    def infer() -> None:
        model.eval()
        with torch.inference_mode(), _autocast(device, amp, dtype):
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
        line += f" (paired {rec['ratio_paired']:.2f}"
        if rec.get("ci95") and not any(math.isnan(x) for x in rec["ci95"]):
            line += " [{:.2f}, {:.2f}]".format(*rec["ci95"])
        if rec.get("aa_ratio") is not None:
            line += f", A/A {rec['aa_ratio']:.2f}"
        line += f", {rec.get('rounds', len(rec['ours_samples']))} rounds)"
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


# ------------------------------------------------------------------ the instrument


def bootstrap_median_ci(values: list[float], level: float = 0.95, resamples: int = 2000,
                        seed: int = 0) -> tuple[float, float]:
    """The percentile-bootstrap `level` interval of the median of `values` (resampled rounds)."""
    import random

    if len(values) < 2:
        return (math.nan, math.nan)
    rng = random.Random(seed)
    n = len(values)
    meds = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(resamples))
    lo = meds[int((1 - level) / 2 * resamples)]
    hi = meds[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return (lo, hi)


def interleaved(fns: dict[str, Callable[[], None]], *, warmup: int = 1, min_rounds: int = 5,
                max_rounds: int = 60, budget_s: float = 60.0, precision: float = 0.03,
                sync: Callable[[], None] = lambda: None, seed: int = 0) -> dict[str, list[float]]:
    """Time the callables in rounds until the paired ratio is known to `precision`, or the budget.

    fns: {"ours": f, "tv": g, "aa": h}, h being torchvision again (a second copy), so the
    A/A ratio aa / tv of the same rounds states the noise floor of this run on this machine.
    Each round runs every callable once, in an order shuffled per round (a fixed order would
    give the second one the caches and clocks the first one warmed). After `min_rounds` timed
    rounds, stops when the bootstrap 95 % interval of the median of ours_i / tv_i is narrower than
    `precision` (relative, each side) or when `budget_s` seconds of timed rounds have passed,
    and never after `max_rounds`; the budget never cuts a figure below `min_rounds` (an interval
    from two rounds is no interval). Returns the seconds per call, in round order, per name.
    """
    import random

    rng = random.Random(seed)
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    spent = 0.0
    for i in range(warmup + max_rounds):
        order = names[:]
        rng.shuffle(order)
        for name in order:
            sync()
            t0 = time.perf_counter()
            fns[name]()
            sync()
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(dt)
                spent += dt
        done = len(times[names[0]])
        if done >= min_rounds and "ours" in times and "tv" in times:
            ratios = [o / t for o, t in zip(times["ours"], times["tv"])]
            lo, hi = bootstrap_median_ci(ratios, resamples=500, seed=seed)
            mid = statistics.median(ratios)
            if (hi - lo) / 2 <= precision * mid or spent >= budget_s:
                break
    return times


def instrument_record(figure: str, size: str, times: dict[str, list[float]], unit: str = "s",
                      per: int = 1, **extra: Any) -> dict[str, Any]:
    """`ratio_record` of ours vs tv plus the paired ratio's bootstrap 95 % interval and, when
    `times` has an "aa" entry, the A/A ratio (torchvision against itself) with its interval."""
    rec = ratio_record(figure, size, times["ours"], times["tv"], unit=unit, per=per, **extra)
    paired = [o / t for o, t in zip(times["ours"], times["tv"])]
    rec["rounds"] = len(paired)
    rec["ci95"] = list(bootstrap_median_ci(paired))
    if "aa" in times:
        aa = [a / t for a, t in zip(times["aa"], times["tv"])]
        rec["aa_ratio"] = statistics.median(aa)
        rec["aa_ci95"] = list(bootstrap_median_ci(aa))
        rec["aa_samples"] = [round(x, 5) for x in times["aa"]]
    return rec

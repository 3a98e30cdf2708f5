"""Peak memory of a training step and of an inference at batch 1, ours vs torchvision.

CPU: one child process per model (so neither sees the other's heap); on Linux the child resets
its peak-RSS counter (`/proc/self/clear_refs`, "5") and reports `VmHWM - VmRSS before the phase
started` (the phase's extra resident memory: activations, gradients, optimiser state, allocator
slack — the weights themselves are in the baseline). CUDA: `torch.cuda.max_memory_allocated`
in process.
"""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from benchmarks.peer import SIZES, build_pair, make_inputs
from benchmarks.timing import emit, make_infer, make_train_step
from frcnn.config import Config, config_from_dict

REPO_ROOT = Path(__file__).resolve().parents[1]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_supported() -> bool:
    return sys.platform.startswith("linux") and _reset_peak()


def memory_child() -> None:
    """Child process: `python -c ... <json>`; prints {"infer_b1": MiB, "train_step": MiB}."""
    args = json.loads(sys.argv[1])
    torch.set_num_threads(args["threads"])
    base = config_from_dict(args["config"])
    ours, tv, _ = build_pair(args["size"], base)
    model = ours if args["impl"] == "ours" else tv
    del ours, tv
    gc.collect()
    images, targets = make_inputs(args["size"], args["batch"])
    one = images[:1]
    out = {}
    infer = make_infer(model, one)
    baseline = _rss_kib("VmRSS")
    _reset_peak()
    infer()
    out["infer_b1"] = (_rss_kib("VmHWM") - baseline) / 1024
    step = make_train_step(model, images, targets)
    _reset_peak()
    for _ in range(2):  # the second step has the momentum buffers of the first
        step()
    out["train_step"] = (_rss_kib("VmHWM") - baseline) / 1024
    print("MEMORY " + json.dumps(out))


def measure_memory_cpu(size: str, impl: str, base: Config, batch: int = 2) -> dict[str, float]:
    """Peak extra RSS (MiB) of inference at batch 1 and of two train steps, in a child process."""
    arg = json.dumps({"size": size, "impl": impl, "config": base.to_dict(), "batch": batch,
                      "threads": torch.get_num_threads()})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    proc = subprocess.run([sys.executable, "-c",
                           "from benchmarks.memory import memory_child; memory_child()", arg],
                          capture_output=True, text=True, env=env, timeout=900)
    for line in proc.stdout.splitlines():
        if line.startswith("MEMORY "):
            return json.loads(line[len("MEMORY "):])
    raise RuntimeError(f"memory child for {size} {impl} failed:\n{proc.stderr[-2000:]}")


def measure_memory_cuda(model: nn.Module, fn: Callable[[], None]) -> float:
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def emit_cpu_memory(records: list[dict[str, Any]], base: Config, quick: bool) -> None:
    """Emit each size's peak memory on CPU (a child process per model), or why it is skipped."""
    for size in SIZES:
        tag = {"device": "cpu", "amp": False, "threads": torch.get_num_threads()}
        if not memory_supported():
            emit(records, {"figure": "peak_memory", "size": size, "unit": "MiB",
                           "skipped": "needs Linux /proc/self/clear_refs", **tag})
            continue
        if quick and size.startswith("resnet50"):
            emit(records, {"figure": "peak_memory", "size": size, "unit": "MiB",
                           "skipped": "--quick skips peak memory at resnet50", **tag})
            continue
        mem = {impl: measure_memory_cpu(size, impl, base) for impl in ("ours", "tv")}
        for phase in ("train_step", "infer_b1"):
            o, p = mem["ours"][phase], mem["tv"][phase]
            emit(records, {"figure": f"peak_memory_{phase}", "size": size, "unit": "MiB",
                           "ours": o, "torchvision": p, "ratio": o / p if p > 0 else math.nan,
                           "method": "child process, VmHWM - VmRSS before the phase", **tag})

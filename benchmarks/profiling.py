"""One profiled call of a model: forward stage times and the top ops by self CPU time.

(Not `profile.py`: run as a script, `python benchmarks/x.py` puts this folder first on `sys.path`,
where a `profile` module would shadow the standard library's, which `cProfile` imports.)
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


def _stage_hooks(model: nn.Module) -> list[Any]:
    """record_function scopes `stage:<name>` around the model's top-level children's forward."""
    handles = []
    for name in ("transform", "backbone", "rpn", "roi_heads"):
        module = getattr(model, name, None)
        if module is None:
            continue
        scope: list[Any] = []

        def pre(_m, _a, name=name, scope=scope):
            rf = torch.autograd.profiler.record_function(f"stage:{name}")
            rf.__enter__()
            scope.append(rf)

        def post(_m, _a, _o, scope=scope):
            scope.pop().__exit__(None, None, None)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    return handles


def profile_step(model: nn.Module, fn: Callable[[], None], top: int = 12) -> dict[str, Any]:
    """One profiled call of `fn`: forward stage times (ms) and the top ops by self CPU time (ms)."""
    from torch.profiler import ProfilerActivity, profile

    handles = _stage_hooks(model)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
    finally:
        for h in handles:
            h.remove()
    events = prof.key_averages()
    stages = {e.key[len("stage:"):]: e.cpu_time_total / 1e3 for e in events
              if e.key.startswith("stage:")}
    ops = sorted((e for e in events if not e.key.startswith("stage:")),
                 key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    total = sum(e.self_cpu_time_total for e in events if not e.key.startswith("stage:")) / 1e3
    return {"stages_ms": {k: round(v, 1) for k, v in stages.items()},
            "top_ops": [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3, 1),
                         "calls": e.count} for e in ops],
            "total_self_ms": round(total, 1)}

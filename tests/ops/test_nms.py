"""frcnn.ops.nms: the first top_n boxes torchvision's NMS keeps, from a prefix of the candidates."""

from __future__ import annotations

import pytest
import torch
import torchvision.ops.boxes as tv_boxes
from torchvision.ops import batched_nms, nms

from frcnn.ops.nms import nms_top_n, per_group_nms


def random_boxes(n: int, seed: int, ties: str = "none", spread: float = 300.0,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * spread
    wh = torch.rand(n, 2, generator=g) * 120 + 2
    scores = torch.randn(n, generator=g) * 3
    if ties == "bf16":  # a bfloat16 objectness: many equal scores
        scores = scores.to(torch.bfloat16).float()
    elif ties == "round":  # a handful of distinct scores
        scores = scores.round()
    return torch.cat((xy, xy + wh), dim=1).to(dtype), scores.to(dtype)


@pytest.mark.parametrize("ties", ["none", "bf16", "round"])
@pytest.mark.parametrize("thresh", [0.3, 0.5, 0.7, 0.9])
def test_equals_the_head_of_torchvision_nms(ties, thresh):
    for seed, n in enumerate((1, 7, 300, 1500, 3500)):
        boxes, scores = random_boxes(n, seed, ties)
        full = nms(boxes, scores, thresh)
        for top_n in (1, 50, 300, 1000, n, n + 5):
            assert torch.equal(nms_top_n(boxes, scores, thresh, top_n), full[:top_n]), (n, top_n)


def test_a_low_keep_rate_grows_the_prefix_until_it_has_enough(monkeypatch):
    # 2000 boxes in a 10-px square: NMS at 0.5 keeps far fewer than 1 in 4 of them
    import frcnn.ops.nms as nms_module

    boxes, scores = random_boxes(2000, 3, spread=10.0)
    full = nms(boxes, scores, 0.5)
    calls = []
    monkeypatch.setattr(nms_module, "nms", lambda b, s, t: calls.append(b.shape[0]) or nms(b, s, t))
    for top_n in (full.numel() // 2, full.numel(), full.numel() + 1):
        calls.clear()
        assert torch.equal(nms_top_n(boxes, scores, 0.5, top_n), full[:top_n])
        assert len(calls) > 1 and calls == sorted(calls)  # it grew the prefix, never shrank it
    assert calls[-1] == 2000  # asked for more than NMS keeps: it ends on every box


def test_float64_and_empty_inputs():
    boxes, scores = random_boxes(800, 4, "bf16", dtype=torch.float64)
    assert torch.equal(nms_top_n(boxes, scores, 0.7, 100), nms(boxes, scores, 0.7)[:100])
    empty = nms_top_n(torch.zeros(0, 4), torch.zeros(0), 0.7, 300)
    assert empty.dtype == torch.int64 and empty.numel() == 0
    assert nms_top_n(boxes, scores, 0.7, 0).numel() == 0


@pytest.mark.parametrize("n", [999, 1000, 1001, 2500])
def test_per_group_nms_is_torchvisions_branch(monkeypatch, n):
    """per_group_nms says True exactly when torchvision's batched_nms runs one NMS per group."""
    calls = []
    vanilla = tv_boxes._batched_nms_vanilla
    monkeypatch.setattr(tv_boxes, "_batched_nms_vanilla",
                        lambda *a: calls.append(1) or vanilla(*a))
    boxes, scores = random_boxes(n, 5)
    batched_nms(boxes, scores, torch.zeros(n, dtype=torch.int64), 0.7)
    assert per_group_nms(boxes) == bool(calls)

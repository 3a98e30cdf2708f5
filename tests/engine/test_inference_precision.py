"""The opt-in inference speed-ups `eval.amp` and `eval.channels_last`: off, inference is exactly
float32's; on, the convolutions really run in bfloat16 / channels-last and callers still get
float32 detections."""

from __future__ import annotations

import pytest
import torch
from tests.tiny_project import tiny_params

from frcnn.config import config_from_dict
from frcnn.data.dataset import collate_fn
from frcnn.engine import inference
from frcnn.engine.inference import inference_precision, predict
from frcnn.model.build import build_model


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(config_from_dict(tiny_params()), num_classes=2).eval()


def batch() -> list[tuple[torch.Tensor, dict]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(3, 64, 80, generator=g), {"image_id": i}) for i in range(3)]


def conv_dtypes(model: torch.nn.Module) -> list[torch.dtype]:
    """Records the output dtype of every Conv2d while the returned list is alive."""
    seen: list[torch.dtype] = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


def run(model: torch.nn.Module, **knobs) -> list[dict[str, torch.Tensor]]:
    loader = torch.utils.data.DataLoader(batch(), batch_size=2, collate_fn=collate_fn)
    return [det for _, _, det in predict(model, loader, torch.device("cpu"), progress=False, **knobs)]


def test_off_is_exactly_a_plain_float32_call() -> None:
    model = tiny_model()
    seen = conv_dtypes(model)
    got = run(model)
    with torch.inference_mode():
        want = model([img for img, _ in batch()[:2]]) + model([batch()[2][0]])
    assert set(seen) == {torch.float32}
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        assert all(torch.equal(g[k], w[k]) for k in g)


def test_amp_runs_the_convolutions_in_bfloat16_and_returns_float32(monkeypatch) -> None:
    # forced, so the test means the same on a CPU without native bfloat16 (where auto keeps float32)
    monkeypatch.setattr(inference, "autocast_dtype", lambda device, amp: torch.bfloat16 if amp else None)
    model = tiny_model()
    seen = conv_dtypes(model)
    dets = run(model, amp=True)
    assert seen and set(seen) == {torch.bfloat16}
    assert len(dets) == 3
    for det in dets:
        assert det["boxes"].dtype == det["scores"].dtype == torch.float32
        assert det["labels"].dtype == torch.int64
        assert torch.isfinite(det["boxes"]).all()


def test_amp_follows_train_amp_resolution_on_this_cpu() -> None:
    # unforced: bfloat16 only where oneDNN has it natively, float32 otherwise (never emulated)
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    model = tiny_model()
    seen = conv_dtypes(model)
    run(model, amp=True)
    assert set(seen) == {torch.bfloat16 if native else torch.float32}


def test_bfloat16_features_stay_close_to_float32(monkeypatch) -> None:
    model = tiny_model()
    images, _, _ = model.transform([img for img, _ in batch()])
    with torch.inference_mode():
        want = model.backbone(images)
        with inference_precision(model, torch.device("cpu"), amp=False):
            same = model.backbone(images)
        monkeypatch.setattr(inference, "autocast_dtype", lambda device, amp: torch.bfloat16)
        with inference_precision(model, torch.device("cpu"), amp=True):
            low = model.backbone(images)
    assert torch.equal(same, want)
    assert low.dtype == torch.bfloat16
    rel = (low.float() - want).norm() / want.norm()
    assert rel < 0.02, rel  # bfloat16 keeps 8 bits of mantissa: ~0.4 % per value


def test_channels_last_converts_the_weights_and_keeps_the_detections_close() -> None:
    model = tiny_model()
    plain = run(model)
    converted = run(model, channels_last=True)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.dim() == 4]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last)
                         and not m.weight.is_contiguous() for m in convs if m.kernel_size != (1, 1))
    for a, b in zip(plain, converted, strict=True):
        # the same maths in another layout: equal up to float32 summation order
        assert a["boxes"].shape == b["boxes"].shape
        torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("key", ["eval.amp", "eval.channels_last"])
def test_the_knobs_are_off_by_default_and_validated(key: str) -> None:
    from frcnn.config import ConfigError
    from frcnn.pipeline.command import parse_overrides

    section, name = key.split(".")
    assert getattr(getattr(config_from_dict(tiny_params()), section), name) is False
    with pytest.raises(ConfigError, match=key):
        config_from_dict(tiny_params(), parse_overrides([f"{key}=maybe"]))


def test_boxes_are_decoded_in_float32_at_test_time_but_training_keeps_its_autocast_dtype() -> None:
    # bfloat16 corners would be ~2 px coarse at 500 px: the cause of a 0.06 mAP drop under
    # eval.amp before the heads' outputs were cast back to float32
    model = tiny_model()
    seen: dict[str, list[torch.dtype]] = {"propose": [], "postprocess": []}
    propose, postprocess = model.rpn.propose, model.roi_heads.postprocess
    model.rpn.propose = lambda obj, deltas, *a: (seen["propose"].append(deltas.dtype),
                                                 propose(obj, deltas, *a))[1]
    model.roi_heads.postprocess = lambda logits, deltas, *a: (
        seen["postprocess"].append(deltas.dtype), postprocess(logits, deltas, *a))[1]
    images = [img for img, _ in batch()]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(images)
    assert seen == {"propose": [torch.float32], "postprocess": [torch.float32]}
    seen["propose"].clear()
    model.train()
    targets = [{"boxes": torch.tensor([[5.0, 5.0, 30.0, 40.0]]), "labels": torch.tensor([1])}] * 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(images, targets)
    assert seen["propose"] == [torch.bfloat16]

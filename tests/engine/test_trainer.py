"""Training loop: schedule, batching, flip, resume determinism, NaN stop, config mismatch."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest
import torch

from frcnn.config import ConfigError, TrainConfig, config_from_dict
from frcnn.engine.checkpoint import load_checkpoint
from frcnn.engine.device import autocast_dtype, seed_everything
from frcnn.engine.distributed import DistInfo, EpochBatches
from frcnn.engine.inference import to_coco_results
from frcnn.engine.schedule import lr_at
from frcnn.data.flip import hflip
from frcnn.engine.trainer import NonFiniteLossError, TrainingInterrupted, train
from frcnn.errors import CheckpointError
from frcnn.model.build import build_model


class TinyShapes(torch.utils.data.Dataset):
    """n 96x96 images, each with one bright square whose label is 1 or 2."""

    def __init__(self, n: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.items = []
        for i in range(n):
            img = torch.rand(3, 96, 96, generator=g) * 0.2
            x, y = (torch.randint(0, 50, (2,), generator=g)).tolist()
            img[:, y: y + 40, x: x + 40] = 0.9
            self.items.append((img, {"boxes": torch.tensor([[x, y, x + 40, y + 40]], dtype=torch.float32),
                                     "labels": torch.tensor([1 + i % 2]), "image_id": i}))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def collate(batch):
    return [b[0] for b in batch], [b[1] for b in batch]


def tiny_config(**train):
    return config_from_dict({
        "model": {"min_size": 96, "max_size": 96},
        "anchors": {"scales": [32, 64]},
        "rpn": {"hidden_channels": 32, "pre_nms_top_n_train": 200, "post_nms_top_n_train": 50,
                "pre_nms_top_n_test": 100, "post_nms_top_n_test": 20, "batch_size_per_image": 32},
        "roi": {"hidden_dim": 32, "batch_size_per_image": 16},
        "train": {"batch_size": 2, "epochs": 1, "max_steps": 0, "lr": 0.01, "warmup_steps": 2,
                  "num_workers": 0,
                  "checkpoint_every": 3, "log_every": 1, "device": "cpu", **train},
    })


def test_lr_warms_up_then_decays_to_zero_with_cosine():
    cfg = TrainConfig(lr=0.1, warmup_steps=10, schedule="cosine")
    assert lr_at(0, 100, cfg) == pytest.approx(1e-4)
    assert lr_at(5, 100, cfg) == pytest.approx(0.1 * (0.001 * 0.5 + 0.5))
    assert lr_at(10, 100, cfg) == pytest.approx(0.1)
    assert lr_at(55, 100, cfg) == pytest.approx(0.05)
    assert lr_at(100, 100, cfg) == pytest.approx(0.0, abs=1e-12)


def test_step_schedule_drops_at_milestones():
    cfg = TrainConfig(lr=1.0, warmup_steps=0, schedule="step", step_milestones=(0.5, 0.75),
                      step_gamma=0.1)
    assert [lr_at(s, 100, cfg) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_epoch_batches_shard_one_global_order_and_resume_mid_epoch():
    single = list(EpochBatches(10, 4, seed=3, epoch=1, dist_info=DistInfo()))
    assert len(single) == 2 and all(len(b) == 4 for b in single)  # last partial batch dropped
    r0 = list(EpochBatches(10, 2, 3, 1, DistInfo(rank=0, world_size=2)))
    r1 = list(EpochBatches(10, 2, 3, 1, DistInfo(rank=1, world_size=2)))
    assert [a + b for a, b in zip(r0, r1)] == single  # two ranks = one global batch of 4
    assert list(EpochBatches(10, 4, 3, 1, DistInfo(), start_batch=1)) == single[1:]
    assert list(EpochBatches(10, 4, 3, 2, DistInfo())) != single  # a new order each epoch


def test_hflip_mirrors_boxes_and_pixels():
    img = torch.zeros(3, 4, 10)
    img[:, :, 0] = 1.0
    out, t = hflip(img, {"boxes": torch.tensor([[1.0, 0.0, 3.0, 2.0]]), "labels": torch.tensor([1])})
    assert out[:, :, -1].eq(1).all() and out[:, :, 0].eq(0).all()
    assert t["boxes"].tolist() == [[7.0, 0.0, 9.0, 2.0]]


def test_to_coco_results_converts_xyxy_to_xywh():
    det = {"boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0]]), "labels": torch.tensor([3]),
           "scores": torch.tensor([0.9])}
    assert to_coco_results(7, det) == [{"image_id": 7, "category_id": 3,
                                        "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.9}]


def _run(cfg, ckpt: Path, resume=False):
    seed_everything(cfg.seed)
    model = build_model(cfg, num_classes=2)
    result = train(model, TinyShapes(), collate, cfg, ckpt, resume=resume, progress=False)
    return model, result


CPU_BF16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def test_amp_means_float16_on_cuda_and_native_bfloat16_on_cpu():
    assert autocast_dtype(torch.device("cuda"), amp=True) == torch.float16
    assert autocast_dtype(torch.device("cuda"), amp=False) is None
    assert autocast_dtype(torch.device("cpu"), amp=False) is None
    assert autocast_dtype(torch.device("cpu"), amp=True) == (torch.bfloat16 if CPU_BF16 else None)


@pytest.mark.parametrize("amp", [True, False])
def test_train_amp_runs_the_trunk_in_bfloat16_on_a_cpu_that_has_it(tmp_path, amp):
    dtypes = []
    seed_everything(0)
    cfg = tiny_config(max_steps=2, amp=amp)
    model = build_model(cfg, num_classes=2)
    model.backbone.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    result = train(model, TinyShapes(), collate, cfg, tmp_path / "m.pt", progress=False)
    assert all(math.isfinite(r["loss"]) for r in result.history)
    # the weights (what the optimizer updates and the checkpoint keeps) stay float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert dtypes and set(dtypes) == {torch.bfloat16 if amp and CPU_BF16 else torch.float32}


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path):
    full, res_full = _run(tiny_config(max_steps=6), tmp_path / "a.pt")
    _run(tiny_config(max_steps=3), tmp_path / "b.pt")
    resumed, res_resumed = _run(tiny_config(max_steps=6), tmp_path / "b.pt", resume=True)
    assert res_full.step == res_resumed.step == 6
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    # the history survives the interruption: 6 logged rows, the same losses
    assert [r["loss"] for r in res_resumed.history] == pytest.approx(
        [r["loss"] for r in res_full.history])


def test_same_params_give_the_same_losses(tmp_path):
    _, a = _run(tiny_config(max_steps=3), tmp_path / "a.pt")
    _, b = _run(tiny_config(max_steps=3), tmp_path / "b.pt")
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]
    assert all(math.isfinite(r["loss"]) for r in a.history)


def test_resume_refuses_a_checkpoint_from_another_config(tmp_path):
    _run(tiny_config(max_steps=3), tmp_path / "a.pt")
    cfg = config_from_dict({**tiny_config(max_steps=6).to_dict(), "loss": {"lambda": 10.0}})
    with pytest.raises(CheckpointError, match=r"loss\.lambda \(5\.0 in checkpoint, 10\.0 now\)"):
        _run(cfg, tmp_path / "a.pt", resume=True)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config(max_steps=6)
    seed_everything(0)
    model = build_model(cfg, num_classes=2)
    calls = {"n": 0}
    original = model.roi_heads.forward

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out, losses = original(*args, **kwargs)
        if calls["n"] == 5:  # the 5th step: after the checkpoint at step 3
            losses["loss_box_reg"] = losses["loss_box_reg"] * float("nan")
        return out, losses

    monkeypatch.setattr(model.roi_heads, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"step 4: non-finite loss in loss_box_reg"):
        train(model, TinyShapes(), collate, cfg, tmp_path / "m.pt", progress=False)
    state = load_checkpoint(tmp_path / "m.pt")
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not list(tmp_path.glob("*.tmp"))


def _poison(model, steps):
    """Make the loss of the given (1-based) forward calls infinite, as a float16 overflow would."""
    calls = {"n": 0}
    original = model.roi_heads.forward

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out, losses = original(*args, **kwargs)
        if calls["n"] in steps:
            losses["loss_classifier"] = losses["loss_classifier"] * float("inf")
        return out, losses
    return poisoned


def test_under_loss_scaling_a_non_finite_step_is_skipped_and_the_scale_lowered(tmp_path,
                                                                                monkeypatch):
    """float16 as the references run it: an overflow skips the update and halves the scale; the
    run goes on (the CPU stands in for CUDA with a CPU GradScaler)."""
    import frcnn.engine.trainer as trainer

    scalers = []

    def cpu_scaler(device, amp_dtype):
        scalers.append(torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, enabled=True))
        return scalers[-1]

    monkeypatch.setattr(trainer, "make_scaler", cpu_scaler)
    cfg = tiny_config(max_steps=6, nonfinite_patience=3)
    seed_everything(0)
    model = build_model(cfg, num_classes=2)
    monkeypatch.setattr(model.roi_heads, "forward", _poison(model, {2, 3, 5}))
    updates = []
    model.register_forward_pre_hook(lambda m, a: updates.append(
        m.roi_heads.predictor.cls_score.weight.detach().clone()))
    result = train(model, TinyShapes(), collate, cfg, tmp_path / "m.pt", progress=False)
    assert result.step == 6
    assert scalers[0].get_scale() == 2.0 ** 7  # three skips halve it three times, no growth yet
    # the weights did not move in the skipped steps 2, 3 and 5 (seen before steps 3, 4 and 6)
    assert torch.equal(updates[1], updates[2]) and torch.equal(updates[2], updates[3])
    assert torch.equal(updates[4], updates[5]) and not torch.equal(updates[0], updates[1])
    assert any("3 of 6 updates skipped" in w for w in result.warnings)


def test_under_loss_scaling_a_run_that_stays_non_finite_stops_naming_steps_and_term(
        tmp_path, monkeypatch):
    import frcnn.engine.trainer as trainer

    monkeypatch.setattr(trainer, "make_scaler",
                        lambda device, dtype: torch.amp.GradScaler("cpu", enabled=True))
    cfg = tiny_config(max_steps=8, nonfinite_patience=3, checkpoint_every=2)
    seed_everything(0)
    model = build_model(cfg, num_classes=2)
    monkeypatch.setattr(model.roi_heads, "forward", _poison(model, {4, 5, 6, 7}))
    with pytest.raises(NonFiniteLossError, match=r"steps 4-6: non-finite for 3 steps in a row "
                                                 r"under float16 loss scaling .*loss_classifier"):
        train(model, TinyShapes(), collate, cfg, tmp_path / "m.pt", progress=False)
    assert load_checkpoint(tmp_path / "m.pt")["step"] == 4  # the last good checkpoint is kept


def test_float16_is_refused_on_a_cpu_and_bfloat16_can_be_asked_for():
    assert autocast_dtype(torch.device("cpu"), True, "bfloat16") == torch.bfloat16
    assert autocast_dtype(torch.device("cuda"), True, "bfloat16") == torch.bfloat16
    assert autocast_dtype(torch.device("cuda"), True, "auto") == torch.float16
    assert autocast_dtype(torch.device("cpu"), False, "bfloat16") is None
    with pytest.raises(ConfigError, match="train.amp_dtype: float16 needs CUDA"):
        autocast_dtype(torch.device("cpu"), True, "float16")


def test_load_checkpoint_names_a_corrupt_file(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"model\.pt: not a readable checkpoint"):
        load_checkpoint(bad)


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_a_checkpoint_at_the_step_it_came_and_resuming_equals_no_interruption(
        tmp_path, signum, code):
    # as in a terminal (a background or nohup'd pytest inherits SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _check_signal(tmp_path, signum, code)
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_signal(tmp_path, signum, code):
    full, res_full = _run(tiny_config(max_steps=6, checkpoint_every=100), tmp_path / "a.pt")
    cfg = tiny_config(max_steps=6, checkpoint_every=100)
    seed_everything(0)
    model = build_model(cfg, num_classes=2)

    def interrupt(step, row):
        if step == 2:  # a real signal, delivered to this process mid-training
            os.kill(os.getpid(), signum)

    with pytest.raises(TrainingInterrupted) as info:
        train(model, TinyShapes(), collate, cfg, tmp_path / "b.pt", progress=False, on_log=interrupt)
    assert info.value.exit_code == code
    assert f"interrupted by {signal.Signals(signum).name} after step 2/6: checkpoint saved to" in str(info.value)
    assert load_checkpoint(tmp_path / "b.pt")["step"] == 2  # not a multiple of checkpoint_every
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    resumed, res = _run(cfg, tmp_path / "b.pt", resume=True)
    assert res.step == 6
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_auto_resume_continues_only_an_unfinished_run_of_the_same_params_and_code(tmp_path, monkeypatch):
    from frcnn.engine import checkpoint as ckpt

    path = tmp_path / "m.pt"
    cfg = tiny_config(max_steps=6)
    assert ckpt.auto_resume(path, cfg.to_dict(), 6) == (False, f"{path}: no checkpoint yet, training from step 0")
    _run(tiny_config(max_steps=3), path)  # a finished 3-step run
    ok, why = ckpt.auto_resume(path, tiny_config(max_steps=3).to_dict(), 3)
    assert not ok and "a finished run (3 steps)" in why
    # a larger budget is another training (the schedule depends on it), not a continuation
    ok, why = ckpt.auto_resume(path, cfg.to_dict(), 6)
    assert not ok and "train.max_steps: 3 -> 6" in why
    # an interrupted run of the same params continues, whatever the inference-only keys say
    state = load_checkpoint(path)
    state["step"] = 2
    ckpt.save_checkpoint(path, state)
    same = config_from_dict(tiny_config(max_steps=3).to_dict(), {"roi.score_thresh": 0.5})
    assert ckpt.auto_resume(path, same.to_dict(), 3) == (
        True, f"{path}: continuing the interrupted training at step 2/3")
    monkeypatch.setattr(ckpt, "code_digest", lambda: "other")
    ok, why = ckpt.auto_resume(path, same.to_dict(), 3)
    assert not ok and "written by other frcnn code" in why
    path.write_bytes(b"junk")
    ok, why = ckpt.auto_resume(path, same.to_dict(), 3)
    assert not ok and "not a readable checkpoint" in why


def test_a_byte_flipped_inside_a_tensor_is_refused_on_load(tmp_path):
    import zipfile

    path = tmp_path / "m.pt"
    _run(tiny_config(max_steps=1), path)
    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = int.from_bytes(raw[info.header_offset + 26: info.header_offset + 28], "little"), \
        int.from_bytes(raw[info.header_offset + 28: info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0xFF  # inside the largest tensor's bytes
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"m\.pt: corrupted \(its tensors no longer match"):
        load_checkpoint(path)


def test_the_nan_message_says_when_no_checkpoint_exists_yet(tmp_path, monkeypatch):
    cfg = tiny_config(max_steps=6, checkpoint_every=100)
    seed_everything(0)
    model = build_model(cfg, num_classes=2)
    original = model.roi_heads.forward

    def poisoned(*args, **kwargs):
        out, losses = original(*args, **kwargs)
        return out, {**losses, "loss_classifier": losses["loss_classifier"] * float("inf")}

    monkeypatch.setattr(model.roi_heads, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"no checkpoint was written before it"):
        train(model, TinyShapes(), collate, cfg, tmp_path / "m.pt", progress=False)


def test_a_loss_that_explodes_but_stays_finite_is_flagged(tmp_path, monkeypatch, capsys):
    cfg = tiny_config(max_steps=5)
    seed_everything(0)
    model = build_model(cfg, num_classes=2)
    original, calls = model.roi_heads.forward, {"n": 0}

    def exploding(*args, **kwargs):
        calls["n"] += 1
        out, losses = original(*args, **kwargs)
        scale = 1e9 if calls["n"] >= 4 else 1.0
        return out, {k: v * scale for k, v in losses.items()}

    monkeypatch.setattr(model.roi_heads, "forward", exploding)
    result = train(model, TinyShapes(), collate, cfg, tmp_path / "m.pt", progress=False)
    assert result.step == 5 and len(result.warnings) == 2  # steps 4 and 5, each said once
    assert "train: warning: loss" in result.warnings[0] and "at step 4" in result.warnings[0]
    assert "diverging" in capsys.readouterr().err


def test_a_state_dict_that_does_not_fit_is_named_key_by_key(tmp_path):
    from frcnn.engine.checkpoint import load_weights

    model = build_model(tiny_config(), num_classes=2)
    weights = dict(model.state_dict())
    weights.pop("rpn.head.conv.weight")
    weights["extra.bias"] = torch.zeros(1)
    weights["roi_heads.predictor.cls_score.weight"] = torch.zeros(7, 3)
    with pytest.raises(CheckpointError) as info:
        load_weights(build_model(tiny_config(), num_classes=2), weights, tmp_path / "m.pt")
    message = str(info.value)
    assert "1 missing (rpn.head.conv.weight)" in message and "1 unexpected (extra.bias)" in message
    assert "roi_heads.predictor.cls_score.weight (7, 3) in the file" in message


def test_a_signal_the_process_ignores_stays_ignored(tmp_path):
    cfg = tiny_config(max_steps=4, checkpoint_every=100)
    seed_everything(0)
    model = build_model(cfg, num_classes=2)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job, `nohup`
    try:
        result = train(model, TinyShapes(), collate, cfg, tmp_path / "m.pt", progress=False,
                       on_log=lambda step, row: os.kill(os.getpid(), signal.SIGINT))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.step == 4

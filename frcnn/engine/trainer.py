"""Training and inference loops as plain functions.

`train(...)` runs SGD with warm-up and a cosine/step schedule, gradient clipping, AMP on CUDA,
checkpoints every `train.checkpoint_every` steps (atomic), `resume`, and the same code under
`torchrun` (DistributedDataParallel; rank 0 alone logs and writes). `predict(...)` runs the model
over a loader in inference mode and returns COCO-format results.

Determinism: the order of images is a function of (seed, epoch), the online flip of
(seed, step, position in batch), and the samplers' randomness comes from the global torch RNG
whose state is checkpointed — so on CPU a resumed run reaches the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from frcnn.config import Config, TrainConfig
from frcnn.data.flip import flip_where
from frcnn.engine.checkpoint import restore_training_state, save_training_state
from frcnn.engine.device import autocast_dtype, select_device
from frcnn.engine.distributed import DistInfo, EpochBatches, steps_per_epoch
from frcnn.engine.schedule import lr_at
from frcnn.errors import UserError
from frcnn.fileio import atomic_write_bytes


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint (if any) is kept."""


class TrainingInterrupted(UserError):
    """SIGINT/SIGTERM during training: a checkpoint of the last finished step was written."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM


@contextlib.contextmanager
def stop_requests() -> Iterator[list[int]]:
    """While training: SIGINT/SIGTERM only ask the loop to stop after the current step (the list
    receives the signal number); a second SIGINT stops at once. Outside the main thread (where
    Python cannot install handlers), and for a signal the process ignores, nothing changes."""
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum: int, frame: Any) -> None:
        if requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requested.append(signum)

    # a signal the caller ignores (a background job's SIGINT, `nohup`) stays ignored
    watched = [sig for sig in (signal.SIGINT, signal.SIGTERM)
               if signal.getsignal(sig) is not signal.SIG_IGN]
    previous = {sig: signal.signal(sig, handler) for sig in watched}
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class TrainResult:
    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    images_per_s: float = 0.0
    warnings: list[str] = field(default_factory=list)


def make_optimizer(params: list[nn.Parameter], t: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum, weight decay) per `train.*`; the lr is set at every step."""
    # fused: one kernel over all parameters; PyTorch's per-tensor loop costs ~50 ms a step on a
    # CPU for the small model's 10 M parameters, a tenth of the step (fused: ~10 ms)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, fused=True)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                           fused=True)


def make_scaler(device: torch.device, amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Loss scaling for float16 only: bfloat16 has float32's exponent range, its gradients do
    not underflow (a disabled scaler is a no-op)."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)


def online_flip(images: list[Tensor], targets: list[dict[str, Tensor]], seed: int, step: int,
                dist_info: DistInfo, batch_size: int
                ) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Flip each image with probability 0.5, the coins a function of (seed, step) and the
    image's place in the *global* batch: the same flips under any world size, and on resume."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    first = dist_info.rank * batch_size
    coins = (torch.rand(batch_size * dist_info.world_size, generator=g)
             < 0.5)[first: first + len(images)]
    return flip_where(coins, images, targets)


def _to_device(images: list[Tensor], targets: list[dict[str, Any]], device: torch.device
               ) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
    return images, targets


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               images: list[Tensor], targets: list[dict[str, Tensor]], *, lr: float,
               amp_dtype: torch.dtype | None, grad_clip: float, dist_info: DistInfo, step: int,
               checkpoint_path: Path) -> tuple[Tensor, dict[str, Tensor], bool]:
    """One optimisation step on one batch (already on the model's device): forward under
    autocast, the summed loss checked finite on every rank, backward, clip, step.

    Returns the total loss, the named losses (not detached) and whether the weights were
    updated. Under float16 loss scaling (`scaler` enabled) a non-finite loss or gradient skips
    the update and lowers the scale, as the references do (False); otherwise a non-finite loss
    raises NonFiniteLossError.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    device_type = images[0].device.type
    with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
        losses = model(images, targets)
    loss = sum(losses.values())
    scaled = scaler.scale(loss)  # (the loss itself without loss scaling)
    finite = torch.isfinite(loss.detach()).float()
    if dist_info.world_size > 1:  # all ranks stop (or skip) together instead of hanging in all-reduce
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    optimizer.zero_grad(set_to_none=True)
    if not finite.item():
        if scaler.is_enabled():  # float16 overflow: skip this update, halve the scale
            scaler.update(new_scale=scaler.get_scale() * scaler.get_backoff_factor())
            return loss, losses, False
        raise NonFiniteLossError(f"step {step}: non-finite loss in {nonfinite_terms(losses)}; "
                                 f"{_kept(checkpoint_path)} — lower train.lr or raise "
                                 "train.warmup_steps")
    scaled.backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                       grad_clip)
    scale = scaler.get_scale()
    scaler.step(optimizer)  # skipped by the scaler itself when a gradient is inf/NaN
    scaler.update()
    return loss, losses, not (scaler.is_enabled() and scaler.get_scale() < scale)


def nonfinite_terms(losses: dict[str, Tensor]) -> str:
    """'loss_box_reg ({values})': the non-finite loss terms by name, with every term's value."""
    bad = [k for k, v in losses.items() if not torch.isfinite(v)]
    values = {k: float(v.detach()) for k, v in losses.items()}
    return f"{', '.join(bad) or 'the gradients (the loss is finite)'} ({values})"


def _kept(checkpoint_path: Path) -> str:
    if Path(checkpoint_path).exists():
        return f"the last good checkpoint {checkpoint_path} is kept"
    return f"no checkpoint was written before it ({checkpoint_path} does not exist)"


class SkipCounter:
    """Consecutive updates skipped under float16 loss scaling; more than `patience` in a row is a
    run that stays non-finite, not an overflow the scale recovers from."""

    def __init__(self, patience: int) -> None:
        self.patience, self.in_a_row, self.total = patience, 0, 0

    def update(self, stepped: bool, step: int, losses: dict[str, Tensor], scale: float,
               checkpoint_path: Path) -> None:
        if stepped:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.total += 1
        if self.in_a_row >= self.patience:
            raise NonFiniteLossError(
                f"steps {step - self.in_a_row + 1}-{step}: non-finite for {self.in_a_row} steps in a "
                f"row under float16 loss scaling (train.nonfinite_patience {self.patience}; loss "
                f"scale now {scale:g}), last in {nonfinite_terms(losses)}; "
                f"{_kept(checkpoint_path)} — lower train.lr or train in bfloat16/float32")


def _budget(n_images: int, t: TrainConfig, dist_info: DistInfo) -> tuple[int, int]:
    """(total steps, steps per epoch) of the run."""
    n_per_epoch = steps_per_epoch(n_images, t.batch_size, dist_info.world_size)
    if n_per_epoch == 0:
        raise ValueError(f"train.batch_size: {t.batch_size} x {dist_info.world_size} process(es) "
                         f"exceeds the {n_images} training images")
    return (t.max_steps if t.max_steps > 0 else t.epochs * n_per_epoch), n_per_epoch


def epoch_loader(dataset: torch.utils.data.Dataset, collate_fn: Callable, cfg: Config, epoch: int,
                 start_batch: int, dist_info: DistInfo, device: torch.device
                 ) -> torch.utils.data.DataLoader:
    """This rank's batches of `epoch` from batch `start_batch` on (see `EpochBatches`)."""
    batches = EpochBatches(len(dataset), cfg.train.batch_size, cfg.seed, epoch, dist_info,
                           start_batch)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, collate_fn=collate_fn, num_workers=cfg.train.num_workers,
        pin_memory=device.type == "cuda",
        # its own generator: the loader must not draw from the global RNG, which the
        # samplers use and the checkpoint restores
        generator=torch.Generator().manual_seed(cfg.seed + epoch))


class Throughput:
    """Images per second over the whole run and over the window since the last logged row."""

    def __init__(self) -> None:
        self.start = self.window_start = time.perf_counter()
        self.images = self.window_images = 0

    def count(self, images: int) -> None:
        self.images += images
        self.window_images += images

    def window_rate(self) -> float:
        now = time.perf_counter()
        rate = self.window_images / max(now - self.window_start, 1e-9)
        self.window_start, self.window_images = now, 0
        return rate

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def total_rate(self) -> float:
        return self.images / max(self.seconds(), 1e-9)


def wrap_ddp(model: nn.Module, device: torch.device, dist_info: DistInfo) -> nn.Module:
    """`model` under DistributedDataParallel when there are several processes, else itself."""
    if dist_info.world_size <= 1:
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def _place(model: nn.Module, device_name: str, dist_info: DistInfo) -> torch.device:
    device = select_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
        torch.backends.cudnn.benchmark = True  # fixed-size padded batches: autotuning pays off
    # channels-last is the layout oneDNN's and cuDNN's fast convolutions use: ~9 % off a CPU step
    model.to(device, memory_format=torch.channels_last)
    return device


def train(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    collate_fn: Callable,
    cfg: Config,
    checkpoint_path: Path,
    *,
    resume: bool = False,
    extra_state: dict[str, Any] | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    dist_info: DistInfo | None = None,
    progress: bool = True,
    mirror_path: Path | None = None,
) -> TrainResult:
    """Train `model` on `dataset` per `cfg.train`; checkpoints go to `checkpoint_path`.

    `extra_state` (class names, MLflow run id ...) is stored in every checkpoint. `on_log(step,
    row)` receives each logged row (MLflow). `mirror_path`: every checkpoint is also copied there.
    Raises NonFiniteLossError on a NaN/inf loss, TrainingInterrupted on SIGINT/SIGTERM.
    """
    t = cfg.train
    dist_info = dist_info or DistInfo()
    device = _place(model, t.device, dist_info)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], t)
    amp_dtype = autocast_dtype(device, t.amp, t.amp_dtype)
    scaler = make_scaler(device, amp_dtype)
    total_steps, n_per_epoch = _budget(len(dataset), t, dist_info)

    step, history = 0, []
    if resume and Path(checkpoint_path).exists():
        step, history = restore_training_state(checkpoint_path, model, optimizer, scaler,
                                               cfg.to_dict(), dist_info.rank)
        if dist_info.is_main:
            print(f"resumed from {checkpoint_path} at step {step}/{total_steps}")
    ddp_model = wrap_ddp(model, device, dist_info)

    def save(at_step: int) -> None:
        save_training_state(checkpoint_path, model, optimizer, scaler, at_step, history,
                            {"config": cfg.to_dict(), **(extra_state or {})}, dist_info)
        if mirror_path is not None and dist_info.is_main:  # a copy that outlives the workspace
            atomic_write_bytes(mirror_path, Path(checkpoint_path).read_bytes(), immediate=True)

    model.train()
    bar = tqdm(total=total_steps, initial=step, desc="train", disable=not (progress and dist_info.is_main),
               dynamic_ncols=True)
    meter = Throughput()
    skips = SkipCounter(t.nonfinite_patience)
    warnings: list[str] = []
    with stop_requests() as stop:
        while step < total_steps:
            epoch, start_batch = divmod(step, n_per_epoch)
            for images, targets in epoch_loader(dataset, collate_fn, cfg, epoch, start_batch,
                                                dist_info, device):
                if step >= total_steps:
                    break
                if cfg.augment.online_flip:
                    images, targets = online_flip(images, targets, cfg.seed, step, dist_info,
                                                  t.batch_size)
                images, targets = _to_device(images, targets, device)
                lr = lr_at(step, total_steps, t)
                loss, losses, stepped = train_step(
                    ddp_model, optimizer, scaler, images, targets, lr=lr, amp_dtype=amp_dtype,
                    grad_clip=t.grad_clip, dist_info=dist_info, step=step,
                    checkpoint_path=checkpoint_path)
                step += 1
                skips.update(stepped, step, losses, scaler.get_scale(), checkpoint_path)
                meter.count(len(images) * dist_info.world_size)
                bar.update(1)
                if step % t.log_every == 0 or step == total_steps:
                    history.append(row := {"step": step, "lr": lr, "loss": float(loss.detach()),
                                           **{k: float(v.detach()) for k, v in losses.items()},
                                           "images_per_s": meter.window_rate()})
                    bar.set_postfix(loss=f"{row['loss']:.3f}", ips=f"{row['images_per_s']:.1f}")
                    warning = divergence_warning(history)
                    if warning and dist_info.is_main and warning not in warnings:
                        warnings.append(warning)
                        tqdm.write(warning, file=sys.stderr)
                    if on_log is not None and dist_info.is_main:
                        on_log(step, row)
                if step % t.checkpoint_every == 0 or step == total_steps:
                    save(step)
                signum = _stop_signal(stop, dist_info, device)
                if signum:
                    if step % t.checkpoint_every and step != total_steps:
                        save(step)
                    bar.close()
                    raise TrainingInterrupted(
                        f"interrupted by {signal.Signals(signum).name} after step {step}/{total_steps}: "
                        f"checkpoint saved to {checkpoint_path}; `frcnn train --resume` (or `dvc repro`, "
                        "with the same params) continues from it", signum)
    bar.close()
    if skips.total:  # the references' behaviour, but a user should know it happened
        warnings.append(f"train: {skips.total} of {step} updates skipped under float16 loss "
                        f"scaling (non-finite loss or gradients); final loss scale {scaler.get_scale():g}")
        if dist_info.is_main:
            tqdm.write(warnings[-1], file=sys.stderr)
    return TrainResult(step=step, history=history, seconds=meter.seconds(),
                       images_per_s=meter.total_rate(), warnings=warnings)


DIVERGENCE_FACTOR = 100.0


def divergence_warning(history: list[dict[str, float]]) -> str:
    """A warning once the logged loss exceeds `DIVERGENCE_FACTOR` times the first logged loss:
    still finite, so training goes on, but almost certainly diverging. "" otherwise."""
    if len(history) < 2:
        return ""
    first, last = history[0]["loss"], history[-1]["loss"]
    if first > 0 and last > DIVERGENCE_FACTOR * first:
        return (f"train: warning: loss {last:.3g} at step {int(history[-1]['step'])} is "
                f"{last / first:.0f}x its first logged value ({first:.3g}): diverging; lower "
                "train.lr or raise train.warmup_steps (train.grad_clip caps the step, not the loss)")
    return ""


def _stop_signal(stop: list[int], dist_info: DistInfo, device: torch.device) -> int:
    """The signal that asks this run to stop, agreed by all ranks (0: none): every rank must save
    at the same step, since saving gathers their RNG states."""
    signum = stop[0] if stop else 0
    if dist_info.world_size > 1:
        flag = torch.tensor([signum], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        signum = int(flag.item())
    return signum

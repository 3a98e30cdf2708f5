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

import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from frcnn.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from frcnn.config import Config, ConfigError, TrainConfig


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


# ---------------------------------------------------------------- small pure pieces


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Learning rate at `step` (0-based): linear warm-up from lr/1000, then cosine or steps."""
    if step < cfg.warmup_steps:
        alpha = step / cfg.warmup_steps
        return cfg.lr * (0.001 * (1 - alpha) + alpha)
    if cfg.schedule == "cosine":
        span = max(total_steps - cfg.warmup_steps, 1)
        progress = min((step - cfg.warmup_steps) / span, 1.0)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    drops = sum(step >= int(m * total_steps) for m in cfg.step_milestones)
    return cfg.lr * cfg.step_gamma ** drops


def select_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but torch sees no CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The reduced precision `train.amp` trains in on `device`, or None for float32.

    CUDA: float16 (with loss scaling). CPU: bfloat16 where oneDNN runs it natively (AVX512-BF16 or
    AMX); elsewhere it would be emulated and slower than float32, so float32 stays.
    """
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    native_bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if device.type == "cpu" and native_bf16:
        return torch.bfloat16
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def hflip(image: Tensor, target: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Mirror image (3, H, W) and its boxes (N, 4) xyxy left-right: x -> W - x."""
    w = image.shape[-1]
    boxes = target["boxes"]
    flipped = torch.stack((w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]), dim=1)
    return image.flip(-1), {**target, "boxes": flipped}


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); gloo on CPU, NCCL on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    return info


class EpochBatches:
    """Batches of dataset indices for one epoch, sharded across ranks, resumable mid-epoch.

    The permutation depends on (seed, epoch) only, so every rank — and a resumed run — sees the
    same global order. Global batch b holds indices [b*B*world, (b+1)*B*world); rank r takes its
    r-th slice of B. The last incomplete global batch is dropped so ranks stay in step.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, dist_info: DistInfo,
                 start_batch: int = 0, order: list[int] | None = None) -> None:
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        self.perm = (torch.randperm(n, generator=g).tolist() if order is None else order)
        self.global_batch = batch_size * dist_info.world_size
        self.batch_size = batch_size
        self.rank = dist_info.rank
        self.start_batch = start_batch

    def __len__(self) -> int:
        return max(len(self.perm) // self.global_batch - self.start_batch, 0)

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.start_batch, len(self.perm) // self.global_batch):
            lo = b * self.global_batch + self.rank * self.batch_size
            yield self.perm[lo: lo + self.batch_size]


def steps_per_epoch(n: int, batch_size: int, world_size: int) -> int:
    return n // (batch_size * world_size)


# ---------------------------------------------------------------- training


@dataclass
class TrainResult:
    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    images_per_s: float = 0.0


def _to_device(images: list[Tensor], targets: list[dict[str, Any]], device: torch.device
               ) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
    return images, targets


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
) -> TrainResult:
    """Train `model` on `dataset` per `cfg.train`; checkpoints go to `checkpoint_path`.

    `extra_state` (class names, MLflow run id ...) is stored in every checkpoint. `on_log(step,
    row)` receives each logged row (MLflow). Raises NonFiniteLossError on a NaN/inf loss.
    """
    t = cfg.train
    dist_info = dist_info or DistInfo()
    device = select_device(t.device)
    if device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    # channels-last is the layout oneDNN's and cuDNN's fast convolutions use: ~9 % off a CPU step
    model.to(device, memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed-size padded batches: autotuning pays off
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel over all parameters; PyTorch's per-tensor loop costs ~50 ms a step on a
    # CPU for the small model's 10 M parameters, a tenth of the step (fused: ~10 ms)
    if t.optimizer == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay,
                                                             fused=True)
    else:
        optimizer = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum,
                                    weight_decay=t.weight_decay, fused=True)
    amp_dtype = autocast_dtype(device, t.amp)
    # bfloat16 has float32's exponent range: only float16 needs its gradients scaled
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    n_per_epoch = steps_per_epoch(len(dataset), t.batch_size, dist_info.world_size)
    if n_per_epoch == 0:
        raise ValueError(f"train.batch_size: {t.batch_size} x {dist_info.world_size} process(es) "
                         f"exceeds the {len(dataset)} training images")
    total_steps = t.max_steps if t.max_steps > 0 else t.epochs * n_per_epoch
    step, history = 0, []
    if resume and Path(checkpoint_path).exists():
        state = load_checkpoint(checkpoint_path, map_location="cpu")
        check_compatible(checkpoint_path, state, cfg.to_dict())
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, history = state["step"], list(state.get("history", []))
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        # each rank samples with its own RNG stream; a checkpoint from another world size
        # gives the extra ranks rank 0's stream (still valid, no longer bit-identical)
        torch.set_rng_state(rng["torch"][dist_info.rank % len(rng["torch"])])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if dist_info.is_main:
            print(f"resumed from {checkpoint_path} at step {step}/{total_steps}")

    ddp_model = model
    if dist_info.world_size > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    def save(at_step: int) -> None:
        cpu_states = [torch.get_rng_state()]
        if dist_info.world_size > 1:  # every rank takes part; rank 0 alone writes
            cpu_states = [torch.empty(0, dtype=torch.uint8)] * dist_info.world_size
            dist.all_gather_object(cpu_states, torch.get_rng_state())
        if not dist_info.is_main:
            return
        rng = {"torch": cpu_states}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        save_checkpoint(checkpoint_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "step": at_step, "config": cfg.to_dict(), "rng": rng,
            "history": history, **(extra_state or {})})

    model.train()
    bar = tqdm(total=total_steps, initial=step, desc="train", disable=not (progress and dist_info.is_main),
               dynamic_ncols=True)
    t_start, images_seen = time.perf_counter(), 0
    window_t, window_imgs = time.perf_counter(), 0
    while step < total_steps:
        epoch, start_batch = divmod(step, n_per_epoch)
        batches = EpochBatches(len(dataset), t.batch_size, cfg.seed, epoch, dist_info, start_batch)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=batches, collate_fn=collate_fn, num_workers=t.num_workers,
            pin_memory=device.type == "cuda",
            # its own generator: the loader must not draw from the global RNG, which the
            # samplers use and the checkpoint restores
            generator=torch.Generator().manual_seed(cfg.seed + epoch))
        for images, targets in loader:
            if step >= total_steps:
                break
            if cfg.augment.online_flip:
                # one coin per image of the *global* batch: the same flips under any world size
                g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
                first = dist_info.rank * t.batch_size
                coins = (torch.rand(t.batch_size * dist_info.world_size, generator=g)
                         < 0.5)[first: first + len(images)]
                pairs = [hflip(i, tg) if c else (i, tg) for i, tg, c in zip(images, targets, coins)]
                images, targets = [p[0] for p in pairs], [p[1] for p in pairs]
            images, targets = _to_device(images, targets, device)
            lr = lr_at(step, total_steps, t)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                losses = ddp_model(images, targets)
            loss = sum(losses.values())
            finite = torch.isfinite(loss.detach()).float()
            if dist_info.world_size > 1:  # all ranks stop together instead of hanging in all-reduce
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if not finite.item():
                bad = [k for k, v in losses.items() if not torch.isfinite(v)]
                raise NonFiniteLossError(
                    f"step {step}: non-finite loss in {', '.join(bad) or 'total'} "
                    f"({ {k: float(v.detach()) for k, v in losses.items()} }); the last good checkpoint "
                    f"{checkpoint_path} is kept — lower train.lr or raise train.warmup_steps")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if t.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            images_seen += len(images) * dist_info.world_size
            window_imgs += len(images) * dist_info.world_size
            bar.update(1)
            if step % t.log_every == 0 or step == total_steps:
                now = time.perf_counter()
                row = {"step": step, "lr": lr, "loss": float(loss.detach()),
                       **{k: float(v.detach()) for k, v in losses.items()},
                       "images_per_s": window_imgs / max(now - window_t, 1e-9)}
                window_t, window_imgs = now, 0
                history.append(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", ips=f"{row['images_per_s']:.1f}")
                if on_log is not None and dist_info.is_main:
                    on_log(step, row)
            if step % t.checkpoint_every == 0 or step == total_steps:
                save(step)
    bar.close()
    seconds = time.perf_counter() - t_start
    return TrainResult(step=step, history=history, seconds=seconds,
                       images_per_s=images_seen / max(seconds, 1e-9))


# ---------------------------------------------------------------- inference


@torch.inference_mode()
def predict(model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device,
            progress: bool = True) -> Iterator[tuple[Tensor, dict[str, Any], dict[str, Tensor]]]:
    """Yield (image, target, detections on CPU) per image; boxes (D, 4) xyxy in its pixels."""
    model.eval().to(device)
    for images, targets in tqdm(loader, desc="predict", disable=not progress, dynamic_ncols=True):
        detections = model([img.to(device) for img in images])
        for image, target, det in zip(images, targets, detections):
            yield image, target, {k: v.cpu() for k, v in det.items()}


def to_coco_results(image_id: int, det: dict[str, Tensor]) -> list[dict[str, Any]]:
    """One image's detections -> COCO results [{image_id, category_id, bbox xywh, score}]."""
    boxes = det["boxes"].tolist()
    return [{"image_id": int(image_id), "category_id": int(label),
             "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
             "score": round(float(score), 5)}
            for (x1, y1, x2, y2), label, score in zip(boxes, det["labels"].tolist(),
                                                      det["scores"].tolist())]

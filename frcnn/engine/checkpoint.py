"""Checkpoints: written atomically, loaded safely, refused when the config does not fit.

A checkpoint is a plain dict of tensors and Python primitives, so `torch.load(weights_only=True)`
can read it (no pickle code execution from a file someone sent you):
  model, optimizer: state dicts · step, epoch: ints · config: params.yaml as a nested dict ·
  num_classes, class_names · rng: torch CPU (and CUDA) generator states · history: logged losses ·
  mlflow_run_id: the run evaluate logs into.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from frcnn.config import flatten
from frcnn.engine.distributed import DistInfo
from frcnn.errors import CheckpointError
from frcnn.fileio import atomic_write_bytes

# Keys whose change makes resuming meaningless (a different model, data or objective). Keys
# outside these (train.max_steps, train.epochs, logging, eval.*) may change between runs.
ARCHITECTURE_SECTIONS = ("model", "anchors", "rpn", "roi", "loss", "data", "augment")
RESUMABLE_TRAIN_KEYS = {"epochs", "max_steps", "checkpoint_every", "log_every", "num_workers",
                        "device", "amp"}




def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically: a crash mid-write never corrupts the previous file."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def config_mismatches(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ in a way that makes the checkpoint incompatible."""
    a, b = flatten(saved), flatten(current)
    bad = []
    for key in sorted(set(a) | set(b)):
        section, _, name = key.partition(".")
        relevant = section in ARCHITECTURE_SECTIONS or key == "seed" or (
            section == "train" and name not in RESUMABLE_TRAIN_KEYS)
        if relevant and a.get(key) != b.get(key):
            bad.append(f"{key} ({a.get(key)!r} in checkpoint, {b.get(key)!r} now)")
    return bad


def check_compatible(path: Path, state: dict[str, Any], current_config: dict[str, Any]) -> None:
    bad = config_mismatches(state.get("config", {}), current_config)
    if bad:
        raise CheckpointError(f"{path}: checkpoint was trained with a different config: "
                              + "; ".join(bad))


def save_training_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler, step: int, history: list[dict[str, float]],
                        extra: dict[str, Any], dist_info: DistInfo) -> None:
    """Everything a resumed run needs to continue bit-identically: weights, optimizer and scaler
    state, the step, every rank's RNG state, the logged history, plus `extra` (config, class
    names, MLflow run id). Every rank takes part (the RNG states are gathered); rank 0 writes."""
    cpu_states = [torch.get_rng_state()]
    if dist_info.world_size > 1:
        cpu_states = [torch.empty(0, dtype=torch.uint8)] * dist_info.world_size
        dist.all_gather_object(cpu_states, torch.get_rng_state())
    if not dist_info.is_main:
        return
    rng: dict[str, Any] = {"torch": cpu_states}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "scaler": scaler.state_dict(), "step": step, "rng": rng,
                           "history": history, **extra})


def restore_training_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                           scaler: torch.amp.GradScaler, current_config: dict[str, Any],
                           rank: int) -> tuple[int, list[dict[str, float]]]:
    """Load what `save_training_state` wrote (refusing a checkpoint of another config) into the
    model, optimizer, scaler and this rank's RNG; returns (step, history)."""
    state = load_checkpoint(path, map_location="cpu")
    check_compatible(path, state, current_config)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    # each rank samples with its own RNG stream; a checkpoint from another world size
    # gives the extra ranks rank 0's stream (still valid, no longer bit-identical)
    torch.set_rng_state(rng["torch"][rank % len(rng["torch"])])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state["step"], list(state.get("history", []))

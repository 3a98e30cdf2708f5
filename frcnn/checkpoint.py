"""Checkpoints: written atomically, loaded safely, refused when the config does not fit.

A checkpoint is a plain dict of tensors and Python primitives, so `torch.load(weights_only=True)`
can read it (no pickle code execution from a file someone sent you):
  model, optimizer: state dicts · step, epoch: ints · config: params.yaml as a nested dict ·
  num_classes, class_names · rng: torch CPU (and CUDA) generator states · history: logged losses ·
  mlflow_run_id: the run evaluate logs into.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from frcnn.config import flatten

# Keys whose change makes resuming meaningless (a different model, data or objective). Keys
# outside these (train.max_steps, train.epochs, logging, eval.*) may change between runs.
ARCHITECTURE_SECTIONS = ("model", "anchors", "rpn", "roi", "loss", "data", "augment")
RESUMABLE_TRAIN_KEYS = {"epochs", "max_steps", "checkpoint_every", "log_every", "num_workers",
                        "device", "amp"}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` via a temp file + rename: a crash mid-write never corrupts it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left if saving failed (disk full ...)


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

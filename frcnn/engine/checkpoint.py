"""Checkpoints: written atomically, loaded safely, refused when the config does not fit.

A checkpoint is a plain dict of tensors and Python primitives, so `torch.load(weights_only=True)`
can read it (no pickle code execution from a file someone sent you):
  model, optimizer: state dicts · step, epoch: ints · config: params.yaml as a nested dict ·
  num_classes, class_names · rng: torch CPU (and CUDA) generator states · history: logged losses ·
  mlflow_run_id: the run evaluate logs into · code_digest: the frcnn source that wrote it ·
  tensors_sha256: a digest of every tensor in it, checked on load (a flipped byte inside a tensor
  would otherwise load silently).
"""

from __future__ import annotations

import hashlib
import io
from functools import cache
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




# Keys that only change what a trained model outputs: a rerun of `dvc repro` may differ in them
# and still continue an interrupted training (see `auto_resume`).
INFERENCE_ONLY_KEYS = {"rpn.pre_nms_top_n_test", "rpn.post_nms_top_n_test", "roi.score_thresh",
                       "roi.nms_thresh", "roi.detections_per_img"}


@cache
def code_digest() -> str:
    """SHA-256 of the frcnn package's .py sources (relative path + bytes, sorted)."""
    root = Path(__file__).resolve().parents[1]  # the frcnn package
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def tensors_digest(obj: Any) -> str:
    """SHA-256 over every tensor in a nested dict/list (keys in order), shapes and bytes."""
    h = hashlib.sha256()

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, torch.Tensor):
            t = node.detach().cpu().contiguous()
            h.update(f"{prefix}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(node, dict):
            for k in sorted(node, key=str):
                walk(node[k], f"{prefix}/{k}")
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{prefix}/{i}")

    walk(obj, "")
    return h.hexdigest()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically: a crash mid-write never corrupts the previous file.
    The tensors' digest goes in with them, so a corrupted copy is refused on load."""
    state = {k: v for k, v in state.items() if k != "tensors_sha256"}
    state["tensors_sha256"] = tensors_digest(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue(), immediate=True)  # resumable the moment it exists


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(state, dict) and "tensors_sha256" in state:
        stored = state["tensors_sha256"]
        if tensors_digest({k: v for k, v in state.items() if k != "tensors_sha256"}) != stored:
            raise CheckpointError(f"{path}: corrupted (its tensors no longer match the digest "
                                  "stored when it was written); train again or restore a copy")
    return state


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
                           "history": history, "code_digest": code_digest(), **extra})


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """`model.load_state_dict(weights)`, or a CheckpointError that says what does not fit: the
    missing and unexpected keys and the tensors of another shape (a few of each)."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [f"{k} {tuple(weights[k].shape)} in the file, {tuple(own[k].shape)} in the model"
              for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]

    def some(items: list[str]) -> str:
        return ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")

    parts = [f"{len(missing)} missing ({some(missing)})" if missing else "",
             f"{len(unexpected)} unexpected ({some(unexpected)})" if unexpected else "",
             f"{len(shapes)} of another shape ({some(shapes)})" if shapes else ""]
    if any(parts):
        raise CheckpointError(f"{path}: its weights do not fit the model its config builds: "
                              + "; ".join(p for p in parts if p))
    model.load_state_dict(weights)


def restore_training_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                           scaler: torch.amp.GradScaler, current_config: dict[str, Any],
                           rank: int) -> tuple[int, list[dict[str, float]]]:
    """Load what `save_training_state` wrote (refusing a checkpoint of another config) into the
    model, optimizer, scaler and this rank's RNG; returns (step, history)."""
    state = load_checkpoint(path, map_location="cpu")
    check_compatible(path, state, current_config)
    load_weights(model, state["model"], path)
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


def auto_resume(path: Path, current_config: dict[str, Any], total_steps: int) -> tuple[bool, str]:
    """Whether `dvc repro` should continue the training checkpoint at `path`, and why (one line).

    Only an unfinished run of exactly this training: the same code (`code_digest`), every param
    equal except the inference-only ones and `eval.*`, fewer steps done than the budget. Anything
    else starts from step 0: a changed budget must never "continue" a finished checkpoint into a
    run that trains nothing, and a changed param or code must never mix two trainings."""
    path = Path(path)
    if not path.exists():
        return False, f"{path}: no checkpoint yet, training from step 0"
    try:
        state = load_checkpoint(path)
    except CheckpointError as exc:
        return False, f"{exc}; training from step 0"
    a, b = flatten(state.get("config", {})), flatten(current_config)
    differ = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
              and k not in INFERENCE_ONLY_KEYS and not k.startswith("eval.")]
    if differ:
        shown = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in differ[:3])
        more = f" (+{len(differ) - 3} more)" if len(differ) > 3 else ""
        return False, f"{path}: another training's checkpoint ({shown}{more}), training from step 0"
    if state.get("code_digest") != code_digest():
        return False, f"{path}: written by other frcnn code, training from step 0"
    step = int(state.get("step", 0))
    if step >= total_steps:
        return False, f"{path}: a finished run ({step} steps), training again from step 0"
    return True, f"{path}: continuing the interrupted training at step {step}/{total_steps}"


def resume_copy(project_root: Path, current_config: dict[str, Any]) -> Path | None:
    """Where the train stage keeps a copy of its latest checkpoint, for a rerun whose workspace
    lost `models/` (a queued `dvc exp run` trains in a temporary copy of the project that is
    deleted when it fails): `<project>/.dvc/tmp/frcnn-resume/<digest>.pt`, the digest of the
    training params and the code. None outside a DVC project."""
    dvc_dir = Path(project_root) / ".dvc"
    if not dvc_dir.is_dir():
        return None
    flat = {k: v for k, v in flatten(current_config).items()
            if k not in INFERENCE_ONLY_KEYS and not k.startswith("eval.")}
    digest = hashlib.sha256((repr(sorted(flat.items())) + code_digest()).encode()).hexdigest()
    return dvc_dir / "tmp" / "frcnn-resume" / f"{digest[:20]}.pt"

"""Where and in which precision a run computes, and its seeds."""

from __future__ import annotations

import random

import numpy as np
import torch

from frcnn.config import ConfigError


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

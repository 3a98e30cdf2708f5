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



def autocast_dtype(device: torch.device, amp: bool, dtype: str = "auto") -> torch.dtype | None:
    """The reduced precision `train.amp` (and `train.amp_dtype`) trains in on `device`, or None
    for float32.

    auto: CUDA float16 (with loss scaling); CPU bfloat16 where oneDNN runs it natively
    (AVX512-BF16 or AMX), elsewhere it would be emulated and slower than float32, so float32 stays.
    `dtype` float16 / bfloat16 asks for that one (float16 on CUDA only).
    """
    if not amp:
        return None
    if dtype == "bfloat16":
        return torch.bfloat16
    if dtype == "float16":
        if device.type != "cuda":
            raise ConfigError("train.amp_dtype: float16 needs CUDA (a CPU trains in bfloat16 or "
                              "float32: set train.amp_dtype: auto)")
        return torch.float16
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

"""Progress bars for long work (tqdm), quiet enough for log files."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress_bar(items: Iterable[T], enabled: bool = True, **kwargs: Any) -> Iterable[T]:
    """tqdm over `items`; updates every few seconds when stderr is a log file (DVC, CI), not a tty."""
    interval = 0.1 if sys.stderr.isatty() else 10.0
    return tqdm(items, disable=not enabled, mininterval=interval, **kwargs)

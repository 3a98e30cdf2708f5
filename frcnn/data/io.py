"""The data stages' error type and atomic file writes (temp name, then rename: no half-written files)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


class DataError(ValueError):
    """Bad input data (a file, an archive, a download); the message names the file and the problem."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any, indent: int | None = 2) -> None:
    """`obj` as JSON at `path`, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode())


def atomic_save_figure(fig: Any, path: Path, dpi: int = 100) -> None:
    """Save a matplotlib figure as PNG at `path`, atomically, and close it."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def staging_dir(final: Path) -> Path:
    """A fresh empty folder beside `final` (same filesystem, so `replace_dir` is a rename)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    path.chmod(0o755)  # mkdtemp makes it owner-only; it becomes an ordinary output folder
    return path


def replace_dir(staging: Path, final: Path) -> None:
    """Move the finished `staging` folder to `final`, replacing what was there."""
    final = Path(final)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def progress_bar(items: Iterable[T], enabled: bool = True, **kwargs: Any) -> Iterable[T]:
    """tqdm over `items`; updates every few seconds when stderr is a log file (DVC, CI), not a tty."""
    interval = 0.1 if sys.stderr.isatty() else 10.0
    return tqdm(items, disable=not enabled, mininterval=interval, **kwargs)

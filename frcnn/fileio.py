"""Writing files so that nothing is ever half-written: a temp name beside the target, then rename.

An interrupted stage leaves either the old file or the new one, never a truncated one for DVC to
cache; folders are built in a staging folder and swapped in (`staging_dir`, `replace_dir`).
JSON is strict: NaN (e.g. the AP of a size bucket without objects) and +-inf are written as null,
and the encoder refuses anything else that strict JSON cannot hold.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` (parents created) via a temp file in the same folder and a rename."""
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


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path`, atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """`obj` with every NaN or +-inf float replaced by None: strict JSON has neither."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2,
                      sort_keys: bool = False) -> None:
    """`obj` as strict JSON (NaN and +-inf as null) at `path`, atomically."""
    text = json.dumps(json_safe(obj), indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"
    atomic_write_text(path, text)


def atomic_write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Rows of equal keys as CSV with a header (the first row's keys), atomically."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def atomic_savefig(fig: Any, path: str | Path, *, close: bool = False, **savefig_kwargs: Any) -> None:
    """`fig.savefig(path)` atomically; the format is `path`'s suffix.

    `close`: close the figure afterwards (also when saving fails); else the caller owns it.
    `savefig_kwargs` go to matplotlib (dpi, bbox_inches ...).
    """
    path = Path(path)
    buf = io.BytesIO()
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    try:
        fig.savefig(buf, **savefig_kwargs)
    finally:
        if close:
            import matplotlib.pyplot as plt

            plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def staging_dir(final: str | Path) -> Path:
    """A fresh empty folder beside `final` (same filesystem, so `replace_dir` is a rename)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    path.chmod(0o755)  # mkdtemp makes it owner-only; it becomes an ordinary output folder
    return path


def replace_dir(staging: Path, final: str | Path) -> None:
    """Move the finished `staging` folder to `final`, replacing what was there."""
    final = Path(final)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(final: str | Path) -> Iterator[Path]:
    """`with staged_dir(out) as staging:` fill `staging`; on success it replaces `out`, on any
    error it is removed and `out` is left as it was."""
    staging = staging_dir(final)
    try:
        yield staging
        replace_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

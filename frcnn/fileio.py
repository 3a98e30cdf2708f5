"""Writing files so that nothing is ever half-written: a temp name beside the target, then rename.

An interrupted stage leaves either the old file or the new one, never a truncated one for DVC to
cache; folders are built in a staging folder and swapped in (`staged_dir`). Inside
`with transaction():` the renames wait until the block ends, so a stage's outputs change all
together or not at all (a full disk at its last file leaves every old output in place). Before
writing, `check_writable` names an output that cannot be written (read-only, no permission, too
little space) instead of failing at the end of the work; a write that fails anyway is one
`OutputError` line naming the path. A folder being replaced is locked (`<parent>/.<name>.lock`):
a second run replacing it at the same time is told so instead of racing it.
JSON is strict: NaN (e.g. the AP of a size bucket without objects) and +-inf are written as null,
and the encoder refuses anything else that strict JSON cannot hold.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import errno
import fcntl
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from frcnn.errors import UserError


class OutputError(UserError, OSError):
    """An output cannot be written: read-only, no permission, no space, or held by another run."""


_REASONS = {errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on the device",
            errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large for the file system"}


def _reason(exc: OSError) -> str:
    return _REASONS.get(exc.errno or 0, exc.strerror or type(exc).__name__)


@dataclass
class _Transaction:
    files: dict[Path, Path] = field(default_factory=dict)     # final -> temp file
    dirs: list[tuple[Path, Path, TextIO]] = field(default_factory=list)  # staging, final, lock
    staging: set[Path] = field(default_factory=set)

    def inside_staging(self, path: Path) -> bool:
        return any(path.is_relative_to(s) for s in self.staging)

    def discard(self) -> None:
        for tmp in self.files.values():
            Path(tmp).unlink(missing_ok=True)
        for staging, _, lock in self.dirs:
            shutil.rmtree(staging, ignore_errors=True)
            lock.close()

    def commit(self) -> None:
        # renames need no space and cannot half-happen: after the last write succeeded, every
        # output changes here, together
        for staging, final, lock in self.dirs:
            replace_dir(staging, final)
            lock.close()
        for final, tmp in self.files.items():
            os.replace(tmp, final)


_ACTIVE: contextvars.ContextVar[_Transaction | None] = contextvars.ContextVar("transaction",
                                                                               default=None)


@contextlib.contextmanager
def transaction() -> Iterator[None]:
    """Every `atomic_write_*` and `staged_dir` inside lands only when the block ends without an
    error; on an error none does and the old outputs stay. (A nested block joins the outer one.
    Files written inside the block cannot be read back from their final path before it ends.)"""
    if _ACTIVE.get() is not None:
        yield
        return
    txn = _Transaction()
    token = _ACTIVE.set(txn)
    try:
        yield
    except BaseException:
        txn.discard()
        raise
    finally:
        _ACTIVE.reset(token)
    txn.commit()


def check_writable(*paths: str | Path, need_bytes: int = 0) -> None:
    """Fail now, naming the path and the cause, if any output in `paths` cannot be written: each
    one's folder (or its nearest existing parent) must take a new file, and have `need_bytes` free."""
    for path in paths:
        path = Path(path)
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise OutputError(f"{path}: cannot write in {folder} ({_reason(exc)})") from None
        if need_bytes:
            st = os.statvfs(folder)
            free = st.f_bavail * st.f_frsize
            if free < need_bytes:
                raise OutputError(f"{path}: only {free / 2**20:.1f} MB free in {folder}, this "
                                  f"stage needs about {need_bytes / 2**20:.1f} MB")


def atomic_write_bytes(path: str | Path, data: bytes, *, immediate: bool = False) -> None:
    """Write `data` to `path` (parents created) via a temp file in the same folder and a rename;
    inside a `transaction()` the rename waits for its end, unless `immediate` (a checkpoint must
    exist as soon as it is written). Raises OutputError naming `path` when it cannot be written."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; outputs are ordinary files
        txn = _ACTIVE.get()
        if txn is not None and not immediate and not txn.inside_staging(path.resolve()):
            previous = txn.files.pop(path, None)
            if previous is not None:
                Path(previous).unlink(missing_ok=True)
            txn.files[path] = Path(tmp)
            return
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({_reason(exc)})") from None
    except BaseException:
        if tmp is not None:
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


def _lock(final: Path) -> TextIO:
    """Hold `<parent>/.<name>.lock` for replacing `final`; another holder is an OutputError."""
    final.parent.mkdir(parents=True, exist_ok=True)
    path = final.parent / f".{final.name}.lock"
    handle = open(path, "a+")  # noqa: SIM115 (held until the folder is replaced)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise OutputError(f"{final}: another run is writing it (lock {path} held by pid "
                          f"{holder}); wait for it to finish or stop it") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


@contextlib.contextmanager
def staged_dir(final: str | Path) -> Iterator[Path]:
    """`with staged_dir(out) as staging:` fill `staging`; on success it replaces `out` (at the end
    of the enclosing `transaction()`, if any), on any error it is removed and `out` is left as it
    was. The folder is locked from the start: a concurrent run fails at once, naming the lock."""
    final = Path(final)
    lock = _lock(final)
    try:
        staging = staging_dir(final)
    except OSError as exc:
        lock.close()
        raise OutputError(f"{final}: cannot write ({_reason(exc)})") from None
    txn = _ACTIVE.get()
    if txn is not None:
        txn.staging.add(staging.resolve())
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        lock.close()
        raise
    if txn is not None:
        txn.dirs.append((staging, final, lock))
        return
    try:
        replace_dir(staging, final)
    finally:
        lock.close()

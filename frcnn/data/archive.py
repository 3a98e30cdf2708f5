"""Safe extraction of .tar / .tar.gz / .tgz / .zip archives, and finding VOC roots inside them.

Every member is checked before anything is written: an absolute path, a `..` component, a link
(symbolic or hard) pointing outside the target, or a device/FIFO member makes the whole archive
refused with an UnsafeArchiveError naming the archive and the member. Tar extraction also uses
Python's `filter="data"` as a second line of defence.
"""

from __future__ import annotations

import lzma
import posixpath
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path

from frcnn.errors import DataError


class UnsafeArchiveError(DataError):
    """An archive member would land outside the target folder (or is a device file)."""


def _escapes(name: str) -> bool:
    """True if the member path `name` is absolute or climbs out of the target folder."""
    name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):  # POSIX or Windows drive
        return True
    norm = posixpath.normpath(name)
    return norm == ".." or norm.startswith("../") or ".." in name.split("/")


def _check_tar(archive: Path, tar: tarfile.TarFile) -> None:
    for m in tar.getmembers():
        if _escapes(m.name):
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} escapes the target folder; "
                                     "archive refused")
        if m.issym() or m.islnk():
            # A symlink's target is relative to its own folder, a hard link's to the archive root.
            base = posixpath.dirname(m.name) if m.issym() else ""
            target = posixpath.join(base, m.linkname)
            if m.linkname.startswith("/") or _escapes(posixpath.normpath(target)):
                raise UnsafeArchiveError(f"{archive}: link {m.name!r} -> {m.linkname!r} points "
                                         "outside the target folder; archive refused")
        elif not (m.isfile() or m.isdir()):
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device or FIFO; "
                                     "archive refused")


def _check_zip(archive: Path, zf: zipfile.ZipFile) -> None:
    for info in zf.infolist():
        if _escapes(info.filename):
            raise UnsafeArchiveError(f"{archive}: member {info.filename!r} escapes the target "
                                     "folder; archive refused")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a symbolic link; "
                                     "archive refused")


def safe_extract(archive: str | Path, into: str | Path) -> None:
    """Extract `archive` (.tar, .tar.gz/.tgz/.tar.bz2/.tar.xz, .zip; detected by content) into `into`.

    `into` should be a staging folder that the caller renames into place afterwards.
    """
    archive, into = Path(archive), Path(into)
    into.mkdir(parents=True, exist_ok=True)
    try:
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tar:
                _check_tar(archive, tar)
                tar.extractall(into, filter="data")
        elif zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                _check_zip(archive, zf)
                zf.extractall(into)
        else:
            raise DataError(f"{archive}: not a .tar, .tar.gz or .zip archive")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{archive}: corrupt archive ({exc})") from None


# what a file name says it is -> tarfile mode (or "zip"); longest suffixes first
_KINDS = ((".tar.gz", "r:gz"), (".tgz", "r:gz"), (".tar.bz2", "r:bz2"), (".tbz2", "r:bz2"),
          (".tar.xz", "r:xz"), (".txz", "r:xz"), (".tar", "r:"), (".zip", "zip"))
_BROKEN = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error, lzma.LZMAError)


def _tar_members(tar: tarfile.TarFile, label: str) -> int:
    """The number of members, after checking the end-of-archive block follows the last one:
    tarfile stops silently where a cut-off archive runs out, POSIX tar writers always end so."""
    members = tar.getmembers()
    assert tar.fileobj is not None
    tar.fileobj.seek(tar.offset)
    end = tar.fileobj.read(tarfile.BLOCKSIZE)
    if len(end) != tarfile.BLOCKSIZE or end.count(0) != tarfile.BLOCKSIZE:
        raise DataError(f"{label}: cut short (no end-of-archive block after its "
                        f"{len(members)} members)")
    return len(members)


def check_archive(path: str | Path, name: str | None = None) -> int:
    """Check that `path` opens as the archive type its name (or `name`, e.g. the final name of a
    `.part` download) says, .tar/.tar.gz/.tgz/.tar.bz2/.tar.xz/.zip, and that every member can be
    listed; a name with none of these suffixes may be any of them. Returns the member count;
    raises DataError `<name>: <what is wrong>` (an HTML page, a cut-off body ...)."""
    path = Path(path)
    label = name or path.name
    suffix, kind = next(((s, k) for s, k in _KINDS if label.lower().endswith(s)), ("", None))
    try:
        if kind is None:  # detected by content, as safe_extract does
            if zipfile.is_zipfile(path):
                kind = "zip"
            elif not tarfile.is_tarfile(path):
                raise DataError(f"{label}: not a .tar, .tar.gz or .zip archive")
        if kind == "zip":
            with zipfile.ZipFile(path) as zf:
                return len(zf.infolist())
        with tarfile.open(path, kind or "r:*") as tar:
            return _tar_members(tar, label)
    except _BROKEN as exc:
        reason = (str(exc) or type(exc).__name__).splitlines()[0]
        raise DataError(f"{label}: not a valid {suffix + ' ' if suffix else ''}archive "
                        f"({reason})") from None


def find_voc_roots(folder: str | Path) -> list[str]:
    """Folders under `folder` holding both Annotations/ and JPEGImages/, as sorted POSIX paths
    relative to `folder` ("VOCdevkit/VOC2007", or "." for a bare VOC root)."""
    folder = Path(folder)
    roots = [p.parent for p in folder.rglob("Annotations")
             if p.is_dir() and (p.parent / "JPEGImages").is_dir()]
    return sorted(p.relative_to(folder).as_posix() for p in roots)

"""Downloading one file robustly: mirrors in turn, retries with back-off, HTTP Range resume, MD5.

Only the standard library's urllib: no extra dependency. A download streams into
`<name>.part` beside the destination; after a cut connection the next attempt asks for the
remaining bytes (`Range: bytes=N-`) and appends when the server answers 206, or starts over
when it answers 200. The finished file is MD5-checked and only then renamed to its final name,
so a file at the final name is always complete and verified.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from frcnn.errors import DataError

USER_AGENT = "frcnn-downloader/0.1 (+urllib)"
CHUNK = 1 << 16


class DownloadError(DataError):
    """No URL gave a complete, verified file; the message lists what each URL did."""


class _Permanent(Exception):
    """A failure retrying the same URL cannot fix (404, MD5 mismatch): go to the next mirror."""


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    """Hex MD5 of a file, read in chunks (VOC archives are GBs)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _content_total(resp: http.client.HTTPResponse, offset: int) -> int | None:
    """Total file size from Content-Range (206) or Content-Length (200), if the server says."""
    crange = resp.headers.get("Content-Range")  # "bytes 100-999/1000"
    if crange and "/" in crange and not crange.endswith("/*"):
        return int(crange.rsplit("/", 1)[1])
    length = resp.headers.get("Content-Length")
    return int(length) + offset if length is not None else None


def _attempt(url: str, part: Path, timeout: float, progress: bool) -> None:
    """One request for `url`, appending to `part` from its current size; raises on any failure."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            if (exc.headers.get("Content-Range") or "").endswith(f"/{offset}"):
                return  # the partial file is already complete (a run died before the rename)
            part.unlink()  # longer than the file: useless
            raise OSError("HTTP 416 for the partial file; starting over") from None
        if 400 <= exc.code < 500 and exc.code not in (408, 429):
            raise _Permanent(f"HTTP {exc.code} {exc.reason}") from None
        raise OSError(f"HTTP {exc.code} {exc.reason}") from None
    with resp:
        if offset and resp.status != 206:
            offset = 0  # the server ignored Range: start over
        total = _content_total(resp, offset)
        with open(part, "ab" if offset else "wb") as f, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=part.name.removesuffix(".part"), disable=not progress, leave=False,
                mininterval=0.1 if sys.stderr.isatty() else 10.0) as bar:
            done = offset
            while True:
                try:
                    block = resp.read(CHUNK)
                except http.client.IncompleteRead as exc:
                    f.write(exc.partial)
                    raise OSError(f"connection cut after {done + len(exc.partial)} bytes") from None
                if not block:
                    break
                f.write(block)
                done += len(block)
                bar.update(len(block))
    if total is not None and done != total:
        raise OSError(f"connection cut after {done} of {total} bytes")


def fetch(urls: Sequence[str], dest: Path, md5: str | None = None, retries: int = 3,
          backoff: float = 2.0, timeout: float = 60.0, progress: bool = True) -> Path:
    """Make `dest` a complete copy of the file the `urls` (mirrors, tried in order) serve.

    An existing `dest` whose MD5 matches is kept without any network access. Each URL gets
    `retries` attempts, waiting backoff * 2**k seconds between them; each attempt resumes the
    partial file. A file whose MD5 is not `md5` is deleted and the next mirror tried. Raises
    DownloadError listing every URL's failure if none succeeds.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if md5 is None or md5sum(dest) == md5.lower():
            return dest
        dest.unlink()  # a corrupt or stale copy is never used
    part = dest.with_name(dest.name + ".part")
    failures: list[str] = []
    for url in urls:
        for attempt in range(max(1, retries)):
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            try:
                _attempt(url, part, timeout, progress)
            except _Permanent as exc:
                failures.append(f"{url}: {exc}")
                break
            except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
                reason = getattr(exc, "reason", None) or exc
                if attempt == max(1, retries) - 1:
                    failures.append(f"{url}: {reason} (after {attempt + 1} attempts)")
                continue
            got = md5sum(part)
            if md5 is not None and got != md5.lower():
                part.unlink()
                failures.append(f"{url}: MD5 mismatch: expected {md5.lower()}, got {got}")
                break
            os.replace(part, dest)
            return dest
    # A .part left by a cut connection stays: the next run resumes it.
    raise DownloadError(f"{dest.name}: download failed from every URL: " + "; ".join(failures))

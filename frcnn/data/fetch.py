"""Downloading one file robustly: mirrors in turn, retries with back-off, HTTP Range resume, MD5.

Only the standard library's urllib: no extra dependency. A download streams into
`<name>.part` beside the destination; after a cut connection the next attempt asks for the
remaining bytes (`Range: bytes=N-`) and appends when the server answers 206, or starts over
when it answers 200. The finished file is MD5-checked and validated (an archive must open as the
type its name says: a captive portal's HTML page or a body cut short without Content-Length is
not one) and only then renamed to its final name, so a file at the final name is always complete
and verified. Without an MD5, a cached file is revalidated with the server (ETag/Last-Modified
kept in a sidecar `<name>.http.json`), so a changed upstream file is fetched again.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from frcnn.errors import DataError
from frcnn.fileio import atomic_write_json

USER_AGENT = "frcnn-downloader/0.1 (+urllib)"
CHUNK = 1 << 16


class DownloadError(DataError):
    """No URL gave a complete, verified file; the message lists what each URL did."""


class _Permanent(Exception):
    """A failure retrying the same URL cannot fix (404, MD5 mismatch): go to the next mirror."""


class _NotModified(Exception):
    """The server answered 304 to a conditional request: the cached copy is current."""


# checks a downloaded file (path, its final name); raises DataError saying what is wrong
Validate = Callable[[Path, str], object]


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
    length = resp.headers.get("Content-Length")
    try:
        if crange and "/" in crange and not crange.endswith("/*"):
            return int(crange.rsplit("/", 1)[1])
        return int(length) + offset if length is not None else None
    except ValueError:  # a header that is no number says nothing; validation still applies
        return None


def _open(url: str, part: Path, offset: int, timeout: float, conditional: dict[str, str]
          ) -> http.client.HTTPResponse | None:
    """The response to a GET of `url` (from byte `offset`), or None when `part` is already the
    whole file. Raises _NotModified for a 304 to `conditional`, OSError/_Permanent otherwise."""
    headers = {"User-Agent": USER_AGENT, **conditional}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 304 and conditional:
            raise _NotModified() from None
        if exc.code == 416 and offset:
            if (exc.headers.get("Content-Range") or "").endswith(f"/{offset}"):
                return None  # the partial file is already complete (a run died before the rename)
            part.unlink()  # longer than the file: useless
            raise OSError("HTTP 416 for the partial file; starting over") from None
        if 400 <= exc.code < 500 and exc.code not in (408, 429):
            raise _Permanent(f"HTTP {exc.code} {exc.reason}") from None
        raise OSError(f"HTTP {exc.code} {exc.reason}") from None


def _stream(resp: http.client.HTTPResponse, part: Path, offset: int, total: int | None,
            progress: bool) -> int:
    """Append (or, from 0, write) the body to `part`; returns the file's size after it."""
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
                return done
            f.write(block)
            done += len(block)
            bar.update(len(block))


def _attempt(url: str, part: Path, timeout: float, progress: bool,
             conditional: dict[str, str]) -> dict[str, str | None]:
    """One request for `url`, appending to `part` from its current size; raises on any failure.
    Returns the server's validators of the file ("etag", "last_modified"; None if not sent)."""
    offset = part.stat().st_size if part.exists() else 0
    resp = _open(url, part, offset, timeout, conditional)
    if resp is None:
        return {"etag": None, "last_modified": None}
    with resp:
        if offset and resp.status != 206:
            offset = 0  # the server ignored Range: start over
        total = _content_total(resp, offset)
        done = _stream(resp, part, offset, total, progress)
        validators = {"etag": resp.headers.get("ETag"),
                      "last_modified": resp.headers.get("Last-Modified")}
    if total is not None and done != total:
        raise OSError(f"connection cut after {done} of {total} bytes")
    return validators


def meta_path(dest: Path) -> Path:
    """The sidecar of a cached file: the URL it came from, its ETag/Last-Modified and size."""
    return dest.with_name(dest.name + ".http.json")


def _read_meta(dest: Path) -> dict[str, Any]:
    try:
        meta = json.loads(meta_path(dest).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _md5_problem(path: Path, md5: str | None) -> str | None:
    if md5 is None:
        return None
    got = md5sum(path)
    return None if got == md5.lower() else f"MD5 mismatch: expected {md5.lower()}, got {got}"


def _invalid(path: Path, name: str, validate: Validate | None) -> str | None:
    """What `validate` finds wrong with the file at `path` (to be called `name`), or None."""
    try:
        if validate is not None:
            validate(path, name)
    except DataError as exc:
        return str(exc).removeprefix(f"{name}: ")
    return None


def _cached(dest: Path, md5: str | None, validate: Validate | None) -> dict[str, Any] | None:
    """The sidecar of a usable cached `dest` ({} if none), or None after deleting a bad copy."""
    if not dest.exists():
        return None
    meta = {} if md5 is not None else _read_meta(dest)
    size = meta.get("size")
    problem = (f"{dest.stat().st_size} bytes, but {size} when downloaded"
               if isinstance(size, int) and dest.stat().st_size != size else None)
    problem = problem or _md5_problem(dest, md5) or (
        None if md5 else _invalid(dest, dest.name, validate))
    if problem is None:
        return meta
    print(f"download: cached {dest} is unusable ({problem}); fetching it again", file=sys.stderr)
    dest.unlink()  # a corrupt or stale copy is never used
    meta_path(dest).unlink(missing_ok=True)
    return None


def _download(urls: Sequence[str], dest: Path, md5: str | None, validate: Validate | None,
              conditional: dict[str, str], retries: int, backoff: float, timeout: float,
              progress: bool) -> Path:
    """The mirror/retry loop of `fetch`: each good copy is renamed to `dest`, a bad one deleted."""
    part = dest.with_name(dest.name + ".part")
    failures: list[str] = []
    for url in urls:
        for attempt in range(max(1, retries)):
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            try:
                validators = _attempt(url, part, timeout, progress, conditional)
            except _NotModified:
                part.unlink(missing_ok=True)
                print(f"download: {url} unchanged (HTTP 304); using the cached {dest}")
                return dest
            except _Permanent as exc:
                failures.append(f"{url}: {exc}")
                break
            except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
                reason = getattr(exc, "reason", None) or exc
                if attempt == max(1, retries) - 1:
                    failures.append(f"{url}: {reason} (after {attempt + 1} attempts)")
                continue
            mismatch = _md5_problem(part, md5)
            problem = mismatch or _invalid(part, dest.name, validate)
            if problem is not None:  # never cached; a cut-off body may come whole next time
                part.unlink()
                if mismatch or attempt == max(1, retries) - 1:
                    failures.append(f"{url}: {problem}")
                    break
                continue
            os.replace(part, dest)
            if md5 is None:
                atomic_write_json(meta_path(dest), {"url": url, **validators,
                                                    "size": dest.stat().st_size})
            return dest
    # A .part left by a cut connection stays: the next run resumes it.
    raise DownloadError(f"{dest.name}: download failed from every URL: " + "; ".join(failures))


def fetch(urls: Sequence[str], dest: Path, md5: str | None = None, retries: int = 3,
          backoff: float = 2.0, timeout: float = 60.0, progress: bool = True,
          validate: Validate | None = None) -> Path:
    """Make `dest` a complete copy of the file the `urls` (mirrors, tried in order) serve.

    Each URL gets `retries` attempts, waiting backoff * 2**k seconds between them; each attempt
    resumes the partial file. A download is only renamed to `dest` once it is good: its MD5 is
    `md5` (else it is deleted and the next mirror tried) and `validate(path, dest.name)` (e.g.
    `archive.check_archive`) raises no DataError (else it is deleted and fetched again). Raises
    DownloadError listing every URL's failure if none succeeds.

    An existing `dest` is checked first: with `md5`, a matching copy is kept without any network
    access. Without, the copy must pass `validate` and have the size it had when downloaded, and
    is then revalidated with the URL it came from (If-None-Match / If-Modified-Since with the
    ETag / Last-Modified kept in `<dest>.http.json`): 304 keeps it, 200 replaces it (if the new
    file is good). A copy whose server sent neither header, or whose URL is no longer among
    `urls`, is kept as is; so is any copy the revalidation cannot replace (server down, a bad new
    file), with one line saying so. A bad copy is deleted (one line) and fetched again.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    meta = _cached(dest, md5, validate)
    if meta is None:
        return _download(urls, dest, md5, validate, {}, retries, backoff, timeout, progress)
    conditional = {k: v for k, v in (("If-None-Match", meta.get("etag")),
                                     ("If-Modified-Since", meta.get("last_modified")))
                   if isinstance(v, str)}
    if md5 is not None or not conditional or meta.get("url") not in urls:
        return dest
    try:
        return _download([meta["url"]], dest, md5, validate, conditional, retries, backoff,
                         timeout, progress)
    except DownloadError as exc:
        print(f"download: kept the cached {dest}: {exc}", file=sys.stderr)
        return dest

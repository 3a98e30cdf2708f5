"""Helpers for the data-stage tests: tiny hand-made VOC trees and a loopback HTTP server."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


def write_jpeg(path: Path, width: int, height: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path, quality=90)


def voc_xml(filename: str, width: int | None, height: int | None,
            objects: list[tuple[str, tuple[float, float, float, float], int]]) -> str:
    """A VOC annotation: objects are (name, (xmin, ymin, xmax, ymax) 1-based, difficult)."""
    size = (f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            if width is not None else "")
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects)
    return f"<annotation><folder>X</folder><filename>{filename}</filename>{size}{objs}</annotation>"


def make_voc_root(root: Path, items: dict[str, tuple[int, int, list]], splits: dict[str, list[str]],
                  ) -> None:
    """Images + annotations + ImageSets/Main lists; items: id -> (width, height, objects)."""
    for i, (image_id, (w, h, objects)) in enumerate(items.items()):
        write_jpeg(root / "JPEGImages" / f"{image_id}.jpg", w, h, seed=i)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            voc_xml(f"{image_id}.jpg", w, h, objects))
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    for split, ids in splits.items():
        (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))


def write_manifest(raw: Path, roots: list[str], class_order: str = "discover") -> None:
    """A download-stage manifest using each root's trainval.txt and test.txt."""
    splits = {s: [{"root": r, "ids": f"{r}/ImageSets/Main/{s}.txt"} for r in roots]
              for s in ("trainval", "test")}
    (raw / "manifest.json").write_text(json.dumps(
        {"dataset": "url", "source": {}, "roots": roots, "splits": splits,
         "class_order": class_order, "notes": []}))


# ---------------------------------------------------------------- loopback HTTP server


@dataclass
class Route:
    """What the server does for one path: `ok` (Range-aware), `500`, `404`, `cut` (the first
    response stops half-way through the body and closes the connection, later ones are `ok`), or
    `cut-nolength` (every response sends no Content-Length and closes the connection half-way:
    the client sees a short body that looks whole). With `etag` / `last_modified` the server
    sends ETag / Last-Modified and answers 304 to a matching If-None-Match / If-Modified-Since."""

    data: bytes = b""
    mode: str = "ok"
    hits: int = 0
    ranges: list[str | None] = field(default_factory=list)
    etag: str | None = None
    last_modified: str | None = None
    conditionals: list[tuple[str | None, str | None]] = field(default_factory=list)

    def not_modified(self, if_none_match: str | None, if_modified_since: str | None) -> bool:
        self.conditionals.append((if_none_match, if_modified_since))
        if if_none_match is not None:  # RFC 9110: If-None-Match wins over If-Modified-Since
            return self.etag is not None and if_none_match == self.etag
        return self.last_modified is not None and if_modified_since == self.last_modified


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves the routes of the FileServer that owns `self.server`."""

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def send_half(self, data: bytes, with_length: bool) -> None:
        """A 200 whose body stops half-way, then the connection is closed."""
        self.send_response(200)
        if with_length:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        route = self.server.routes.get(self.path)  # type: ignore[attr-defined]
        if route is None:
            self.send_error(404)
            return
        route.hits += 1
        rng = self.headers.get("Range")
        route.ranges.append(rng)
        if route.mode == "500":
            self.send_error(500, "boom")
            return
        if route.mode == "404":
            self.send_error(404)
            return
        data = route.data
        if route.not_modified(self.headers.get("If-None-Match"),
                              self.headers.get("If-Modified-Since")):
            self.send_response(304)
            self.end_headers()
            return
        if route.mode == "cut-nolength" or (route.mode == "cut" and route.hits == 1):
            self.send_half(data, with_length=route.mode == "cut")
            return
        start = 0
        if rng and rng.startswith("bytes="):
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        for name, value in (("ETag", route.etag), ("Last-Modified", route.last_modified)):
            if value is not None:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


class FileServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.routes = self.routes  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def serve(self, path: str, data: bytes = b"", mode: str = "ok", etag: str | None = None,
              last_modified: str | None = None) -> str:
        self.routes[path] = Route(data=data, mode=mode, etag=etag, last_modified=last_modified)
        return self.url(path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

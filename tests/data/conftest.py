"""Fixtures for the data-stage tests (helpers live in data_helpers.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from data_helpers import FileServer


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    server = FileServer()
    yield server
    server.close()


@pytest.fixture
def refused_url() -> str:
    """A loopback URL on a port nobody listens on: connection refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing.tar"

"""frcnn.fileio: strict JSON (no NaN or Infinity ever reaches a file) and atomic writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from frcnn.fileio import atomic_write_json


def strict_load(path: Path):
    def refuse(name: str):
        raise ValueError(f"{name} is not strict JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_nan_and_infinities_are_written_as_null(tmp_path):
    path = tmp_path / "m.json"
    atomic_write_json(path, {"nan": math.nan, "inf": math.inf, "neg": -math.inf, "big": float("1e999"),
                             "ok": 0.5, "nested": [1.0, {"x": (math.inf, 2)}]})
    assert strict_load(path) == {"nan": None, "inf": None, "neg": None, "big": None, "ok": 0.5,
                                 "nested": [1.0, {"x": [None, 2]}]}


def test_finite_values_keep_their_formatting(tmp_path):
    obj = {"b": 1.25, "a": [1, 2.0, "x"], "c": None}
    atomic_write_json(tmp_path / "a.json", obj)
    assert (tmp_path / "a.json").read_text() == json.dumps(obj, indent=2) + "\n"
    atomic_write_json(tmp_path / "b.json", obj, indent=None, sort_keys=True)
    assert (tmp_path / "b.json").read_text() == json.dumps(obj, sort_keys=True) + "\n"


def test_what_cannot_be_nulled_is_refused_and_nothing_is_written(tmp_path):
    path = tmp_path / "k.json"
    path.write_text('{"old": 1}\n')
    with pytest.raises(ValueError, match="not JSON compliant"):
        atomic_write_json(path, {math.inf: 1})  # a non-finite key: the encoder refuses it
    assert path.read_text() == '{"old": 1}\n' and list(tmp_path.iterdir()) == [path]

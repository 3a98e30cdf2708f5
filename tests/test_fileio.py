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


# ---------------------------------------------------------------- transactions and locks


def test_a_transaction_lands_every_output_or_none(tmp_path):
    from frcnn.fileio import atomic_write_text, staged_dir, transaction

    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("old f")
    with pytest.raises(RuntimeError), transaction():
        atomic_write_text(tmp_path / "a.txt", "new a")
        with staged_dir(tmp_path / "d") as staging:
            (staging / "f").write_text("new f")
        assert (tmp_path / "a.txt").read_text() == "old a"  # nothing lands before the end
        raise RuntimeError("the last output failed")
    assert (tmp_path / "a.txt").read_text() == "old a"
    assert (tmp_path / "d" / "f").read_text() == "old f"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".d.lock", "a.txt", "d"]  # no temps

    with transaction():
        atomic_write_text(tmp_path / "a.txt", "new a")
        atomic_write_text(tmp_path / "a.txt", "newer a")  # the last write wins, one temp left
        with staged_dir(tmp_path / "d") as staging:
            (staging / "f").write_text("new f")
            atomic_write_text(staging / "g", "inside the staged folder: written at once")
            assert (staging / "g").exists()
    assert (tmp_path / "a.txt").read_text() == "newer a"
    assert (tmp_path / "d" / "f").read_text() == "new f" and (tmp_path / "d" / "g").exists()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_an_immediate_write_lands_inside_a_transaction(tmp_path):
    from frcnn.fileio import atomic_write_bytes, transaction

    with transaction():
        atomic_write_bytes(tmp_path / "ckpt", b"x", immediate=True)
        assert (tmp_path / "ckpt").read_bytes() == b"x"


def test_a_folder_being_replaced_is_locked_and_the_second_writer_told_who_holds_it(tmp_path):
    import os

    from frcnn.fileio import OutputError, staged_dir

    with staged_dir(tmp_path / "out") as staging:
        (staging / "x").write_text("first")
        with pytest.raises(OutputError, match=rf"out: another run is writing it \(lock .*\.out\.lock "
                                              rf"held by pid {os.getpid()}\)"):
            with staged_dir(tmp_path / "out"):
                pass
    assert (tmp_path / "out" / "x").read_text() == "first"
    with staged_dir(tmp_path / "out") as staging:  # released: the next run goes ahead
        (staging / "x").write_text("second")
    assert (tmp_path / "out" / "x").read_text() == "second"
    assert not list(tmp_path.glob(".out.*.tmp")) and not list(tmp_path.glob(".out.old-*"))


def test_check_writable_names_the_path_and_the_space_it_lacks(tmp_path):
    from frcnn.fileio import OutputError, check_writable

    check_writable(tmp_path / "new" / "deeper" / "f.json")  # missing folders are fine
    with pytest.raises(OutputError, match=r"f\.json: only .* MB free in .*, this stage needs about"):
        check_writable(tmp_path / "f.json", need_bytes=2**62)

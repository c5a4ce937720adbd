import json
import os

import numpy as np
import pytest

from tfhalo.atomic import atomic_path, fixed_temporary_path, save_npz_atomic, write_json_atomic, write_text_atomic


class Boom(Exception):
    pass


@pytest.mark.parametrize("unique", [True, False])
def test_success_writes_destination_and_leaves_no_temporary(tmp_path, unique):
    dest = tmp_path / "a.npz"
    with atomic_path(dest, suffix=".tmp.npz", unique=unique) as tmp:
        assert tmp.parent == dest.parent and tmp != dest and not tmp.exists()
        np.savez(tmp, x=np.arange(5))
        assert tmp.is_file() and not dest.exists()  # nothing visible before the rename
    np.testing.assert_array_equal(np.load(dest)["x"], np.arange(5))
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]


def test_fixed_name_is_exactly_name_plus_suffix(tmp_path):
    dest = tmp_path / "sim_000.h5"
    with atomic_path(dest, unique=False) as tmp:
        assert tmp == fixed_temporary_path(dest) == tmp_path / "sim_000.h5.tmp"
        tmp.write_text("x")


def test_unique_names_differ_between_concurrent_writers(tmp_path):
    dest = tmp_path / "out.json"
    with atomic_path(dest) as a, atomic_path(dest) as b:
        assert a != b
        assert str(os.getpid()) in a.name and a.name.startswith(".out.json.") and a.suffix == ".tmp"
        a.write_text("first")
        b.write_text("second")
    # The inner (b) finishes first; the outer rename wins, and neither temporary remains.
    assert dest.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


@pytest.mark.parametrize("unique", [True, False])
def test_exception_leaves_no_destination_and_no_temporary(tmp_path, unique):
    dest = tmp_path / "a.txt"
    with pytest.raises(Boom):
        with atomic_path(dest, unique=unique) as tmp:
            tmp.write_text("partial")
            raise Boom
    assert list(tmp_path.iterdir()) == []


def test_exception_leaves_existing_destination_untouched(tmp_path):
    dest = tmp_path / "a.txt"
    dest.write_text("old")
    before = os.stat(dest)
    with pytest.raises(Boom):
        with atomic_path(dest) as tmp:
            tmp.write_text("new, but unfinished")
            raise Boom
    assert dest.read_text() == "old"
    assert os.stat(dest).st_ino == before.st_ino
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_keyboard_interrupt_and_failed_rename_also_clean_up(tmp_path, monkeypatch):
    dest = tmp_path / "a.txt"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(dest) as tmp:
            tmp.write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []

    def refuse(*args, **kwargs):
        raise OSError("rename refused")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="rename refused"):
        with atomic_path(dest) as tmp:
            tmp.write_text("x")
    assert list(tmp_path.iterdir()) == []


def test_directory_is_renamed_into_place_and_replaces_an_old_one(tmp_path):
    dest = tmp_path / "model"
    for generation in ("old", "new"):
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            (tmp / "weights").write_text(generation)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert [p.name for p in dest.iterdir()] == ["weights"] and (dest / "weights").read_text() == "new"


def test_failed_directory_write_is_removed_and_old_directory_kept(tmp_path):
    dest = tmp_path / "sim_000"
    dest.mkdir()
    (dest / "ics").write_text("old")
    with pytest.raises(Boom):
        with atomic_path(dest, unique=False) as tmp:
            (tmp / "sub").mkdir(parents=True)
            (tmp / "sub" / "ics").write_text("partial")
            raise Boom
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim_000"]
    assert (dest / "ics").read_text() == "old"


def test_json_round_trip_and_text(tmp_path):
    payload = {"seed": 2**62 + 1, "r": 0.1 + 0.2, "names": ["a", "é"], "nested": {"none": None, "ok": True}}
    path = write_json_atomic(tmp_path / "sub" / "summary.json", payload)  # creates the directory
    assert path == tmp_path / "sub" / "summary.json"
    assert json.loads(path.read_text()) == payload
    assert path.read_text() == json.dumps(payload, indent=2)
    assert write_text_atomic(path, "replaced\n").read_text() == "replaced\n"
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]


def test_unserialisable_json_writes_nothing(tmp_path):
    dest = tmp_path / "x.json"
    with pytest.raises(TypeError):
        write_json_atomic(dest, {"a": object()})
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="suffix must be non-empty.*Received: suffix=''"):
        with atomic_path(tmp_path / "a", suffix=""):
            pass
    with pytest.raises(ValueError, match="suffix"):
        with atomic_path(tmp_path / "a", suffix="/x"):
            pass
    with pytest.raises(TypeError, match="suffix must be a string"):
        with atomic_path(tmp_path / "a", suffix=3):
            pass
    with pytest.raises(TypeError, match="text must be a string"):
        write_text_atomic(tmp_path / "a", b"bytes")
    assert list(tmp_path.iterdir()) == []


def test_save_npz_atomic_round_trips_and_keeps_the_old_file_when_it_fails(tmp_path):
    dest = tmp_path / "sub" / "chains.npz"  # the directory is created
    assert save_npz_atomic(dest, a=np.arange(3.0), b=np.eye(2)) == dest
    with np.load(dest) as f:
        np.testing.assert_array_equal(f["a"], np.arange(3.0))
        np.testing.assert_array_equal(f["b"], np.eye(2))
    before = dest.read_bytes()

    class Unsaveable:
        def __array__(self, dtype=None, copy=None):
            raise Boom("cannot convert")

    with pytest.raises(Boom):
        save_npz_atomic(dest, a=np.zeros(2), bad=Unsaveable())
    assert dest.read_bytes() == before
    assert [p.name for p in dest.parent.iterdir()] == ["chains.npz"]

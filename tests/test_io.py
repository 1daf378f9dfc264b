"""Atomic, deterministic writing and the episode file round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.common.io import atomic_path, npz_bytes, write_npz_atomic


def test_npz_bytes_are_deterministic_and_loadable(tmp_path: Path) -> None:
    arrays = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.array("hello")}
    first = npz_bytes(arrays)
    assert first == npz_bytes(dict(reversed(list(arrays.items()))))
    write_npz_atomic(tmp_path / "x.npz", arrays)
    with np.load(tmp_path / "x.npz", allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["b"], arrays["b"])
        assert str(npz["a"]) == "hello"


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_path_replaces_folders(tmp_path: Path) -> None:
    target = tmp_path / "folder"
    target.mkdir()
    (target / "stale").write_text("x")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "fresh").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["fresh"]


def test_object_arrays_are_refused() -> None:
    with pytest.raises(TypeError, match="dtype object"):
        npz_bytes({"x": np.array([{"a": 1}], dtype=object)})


def test_a_killed_writers_temporaries_are_swept_from_a_stage_folder(tmp_path: Path) -> None:
    from pipeline.common.io import remove_stale_temporaries_in

    (tmp_path / ".episode_000001.npz.ab12cd34.tmp").write_bytes(b"half")
    (tmp_path / ".previews.zz99yy88.tmp").mkdir()
    keep = [tmp_path / "episode_000000.npz", tmp_path / ".hidden", tmp_path / "x.tmp"]
    for path in keep:
        path.write_bytes(b"ok")
    removed = remove_stale_temporaries_in(tmp_path)
    assert sorted(p.name for p in removed) == [".episode_000001.npz.ab12cd34.tmp", ".previews.zz99yy88.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in keep)


def test_json_with_one_line_per_item_reads_back_equal_and_is_deterministic(tmp_path: Path) -> None:
    from pipeline.common.io import dumps_json_items, write_json_atomic

    body = {
        "task": "cartpole",
        "records": [{"step": 0, "caption": "pole \u00e9 up", "box": [1.0, 2.5]}, {"step": 1, "caption": ""}],
        "every_k": 1,
    }
    text = dumps_json_items(body, "records")
    assert json.loads(text) == body and text == dumps_json_items(dict(reversed(body.items())), "records")
    lines = text.splitlines()
    assert (
        '    {"box": [1.0, 2.5], "caption": "pole \\u00e9 up", "step": 0},' in lines
        and '    {"caption": "", "step": 1}' in lines
    )
    write_json_atomic(tmp_path / "a.json", body, items="records")
    assert (tmp_path / "a.json").read_text() == text
    assert json.loads(dumps_json_items({"records": []}, "records")) == {"records": []}
    with pytest.raises(ValueError, match="placeholder"):
        dumps_json_items({"records": [1], "other": "\u0000semore-items\u0000"}, "records")

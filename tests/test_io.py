"""Atomic, deterministic writing and the episode file round trip."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.common.io import (
    OUTPUT_MARKER,
    OutputPathError,
    atomic_path,
    npz_bytes,
    stale_temporaries,
    write_npz_atomic,
)

ROOT = Path(__file__).resolve().parents[1]


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


def test_atomic_path_replaces_its_own_earlier_output_and_marks_it(tmp_path: Path) -> None:
    target = tmp_path / "folder"
    for content in ("first", "second"):
        with atomic_path(target, owner="encode") as tmp:
            tmp.mkdir()
            (tmp / content).write_text("y")
    assert sorted(p.name for p in target.iterdir()) == [OUTPUT_MARKER, "second"]
    assert (target / OUTPUT_MARKER).read_text() == "encode\n"


@pytest.mark.parametrize("marker", [None, "pretrain"])
def test_a_folder_that_is_not_this_stages_output_is_refused_before_any_work(tmp_path: Path, marker: str | None) -> None:
    target = tmp_path / "thesis"
    target.mkdir()
    (target / "chapter1.tex").write_text("years of work")
    if marker:
        (target / OUTPUT_MARKER).write_text(marker + "\n")
    ran = []
    with pytest.raises(OutputPathError, match=r"thesis: .*will not replace it"), atomic_path(target, owner="encode"):
        ran.append(True)
    assert not ran and (target / "chapter1.tex").read_text() == "years of work"


def test_the_working_directory_and_its_parents_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / OUTPUT_MARKER).write_text("encode\n")  # even one that looks like an output
    monkeypatch.chdir(project)
    for out in (".", "..", str(project)):
        with pytest.raises(OutputPathError, match="working directory"), atomic_path(out, owner="encode"):
            pass
    assert (project / ".git").is_dir()


_WRITER = """
import sys, time
from pathlib import Path
from pipeline.common.io import atomic_path
with atomic_path(Path(sys.argv[1]), clean_stale=True, owner="encode") as tmp:
    tmp.mkdir()
    (tmp / "partial").write_text("half")
    print("writing", flush=True)
    time.sleep(60)
"""


def test_a_killed_writer_leaves_the_old_output_and_a_second_writer_never_deletes_a_live_ones_temporary(
    tmp_path: Path,
) -> None:
    target = tmp_path / "dataset"
    with atomic_path(target, clean_stale=True, owner="encode") as tmp:
        tmp.mkdir()
        (tmp / "old").write_text("finished")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        (live,) = stale_temporaries(target)
        with (
            pytest.raises(OutputPathError, match="another run is writing it"),
            atomic_path(target, clean_stale=True, owner="encode"),
        ):
            pass
        assert live.is_dir()  # the live writer's temporary survived the second writer
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (target / "old").read_text() == "finished"  # the kill left the finished output in place
    with atomic_path(target, clean_stale=True, owner="encode") as tmp:  # the lock died with the writer
        tmp.mkdir()
        (tmp / "new").write_text("finished")
    assert not live.exists() and sorted(p.name for p in target.iterdir()) == [OUTPUT_MARKER, "new"]


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

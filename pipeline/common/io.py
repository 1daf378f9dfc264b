"""Crash-safe, deterministic file writing shared by every stage.

Outputs are written to a temporary sibling and renamed into place, so an
interrupted stage never leaves a half-written file or folder that a later
stage (or a DVC cache) would read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

#: Fixed timestamp for every archive member: same inputs, same bytes.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


#: The random part of a :func:`tempfile.mkdtemp` name (``tempfile._RandomNameSequence``: 8 of ``[a-z0-9_]``).
_MKDTEMP_RANDOM = r"[a-z0-9_]{8}"


def stale_temporaries(target: str | Path) -> list[Path]:
    """Temporaries :func:`atomic_path` made for ``target`` (``.<name>.XXXXXXXX.tmp`` beside it), sorted.

    Only this exact target's: ``.<name>.`` + 8 random characters + ``.tmp``, so the temporaries of
    another target whose name starts the same (``a`` vs ``a.b``) never match.
    """
    target = Path(target)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.{_MKDTEMP_RANDOM}\.tmp$")
    if not target.parent.is_dir():
        return []
    return sorted(p for p in target.parent.iterdir() if pattern.match(p.name))


def remove_stale_temporaries(target: str | Path) -> list[Path]:
    """Delete what a killed writer of ``target`` left behind (see :func:`stale_temporaries`); returns what was removed.

    Only call it where no other process writes ``target`` at the same time (a stage's own output).
    """
    return _remove(stale_temporaries(target))


def _remove(paths: list[Path]) -> list[Path]:
    """Delete files and folders (not following symlinks); returns ``paths``."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return paths


def remove_stale_temporaries_in(folder: str | Path) -> list[Path]:
    """Delete every temporary a killed :func:`atomic_path` writer left directly in ``folder``
    (``.<name>.XXXXXXXX.tmp``); for a stage's own output folder, which has one writer."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"^\..+\.{_MKDTEMP_RANDOM}\.tmp$")
    return _remove(sorted(p for p in folder.iterdir() if pattern.match(p.name)))


@contextmanager
def atomic_path(target: str | Path, *, clean_stale: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    Works for files and folders: write whatever you like at the yielded path.
    On an exception the temporary is removed and ``target`` is left untouched.
    A SIGKILL leaves the temporary (``.<name>.XXXXXXXX.tmp``) behind: with ``clean_stale``
    (for a stage's own output, which has one writer) those of earlier runs are removed first.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if clean_stale:
        remove_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.rmdir()  # the caller creates a file or folder here
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


def write_bytes_atomic(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def dumps_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(obj, sort_keys=True, indent=2, default=_json_default) + "\n"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


#: Stands in for the one-line-per-item list while the rest of the object is laid out (a string no value holds).
_ITEMS_MARK = "\u0000semore-items\u0000"


def dumps_json_items(obj: dict[str, Any], key: str) -> str:
    """:func:`dumps_json`, but the list ``obj[key]`` holds one compact item per line (sorted keys).

    For files of many records (an episode's annotations): a line per record reads and diffs
    well, and the compact items go through the json module's C encoder, about 10x faster than
    its indenting Python one. Deterministic like :func:`dumps_json`.
    """
    encoder = json.JSONEncoder(sort_keys=True, default=_json_default)
    items = obj[key]
    inner = ",\n".join("    " + encoder.encode(item) for item in items)
    text = dumps_json({**obj, key: _ITEMS_MARK})
    mark = json.dumps(_ITEMS_MARK)
    if text.count(mark) != 1:
        raise ValueError(f"a value holds the placeholder {mark}")
    return text.replace(mark, f"[\n{inner}\n  ]" if items else "[]")


def write_json_atomic(target: str | Path, obj: Any, *, items: str | None = None) -> None:
    """Write ``obj`` as :func:`dumps_json` (``items``: as :func:`dumps_json_items` with that key), atomically."""
    write_bytes_atomic(target, (dumps_json(obj) if items is None else dumps_json_items(obj, items)).encode())


def npz_bytes(arrays: Mapping[str, np.ndarray], compress: bool | Collection[str] = True) -> bytes:
    """An ``.npz`` archive (readable by ``np.load``) with fixed member order and timestamps.

    ``np.savez`` stamps members with the current time; this does not, so the
    same arrays always give the same bytes (DVC caching relies on it).
    ``compress``: deflate every member (True), none (False), or only the members named
    (the others are stored: for data deflate barely shrinks, e.g. noisy float16 fields).
    """
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", compression=method, allowZip64=True) as zf:
        for name in sorted(arrays):
            array = np.asarray(arrays[name])
            if array.dtype == object:
                raise TypeError(f"npz member {name!r} has dtype object; store strings as JSON instead")
            member = io.BytesIO()
            np.lib.format.write_array(member, np.require(array, requirements="C"), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
            deflate = compress if isinstance(compress, bool) else name in compress
            info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue(), compresslevel=1 if deflate else None)
    return buffer.getvalue()


def write_npz_atomic(
    target: str | Path, arrays: Mapping[str, np.ndarray], compress: bool | Collection[str] = True
) -> None:
    """Write ``arrays`` as a deterministic ``.npz`` at ``target``, atomically."""
    write_bytes_atomic(target, npz_bytes(arrays, compress=compress))


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, or of a folder (relative names and contents of its files, sorted)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()

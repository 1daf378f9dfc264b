"""Crash-safe, deterministic file writing shared by every stage.

Outputs are written to a temporary sibling and renamed into place, so an
interrupted stage never leaves a half-written file or folder that a later
stage (or a DVC cache) would read.
"""

from __future__ import annotations

import contextlib
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

from pipeline.common.errors import UserError

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


#: The file a stage's output folder carries, naming the stage (``encode\n``): :func:`atomic_path`
#: replaces an existing folder only when it carries this marker naming the same owner.
OUTPUT_MARKER = ".semore-output"


class OutputPathError(UserError):
    """An output path that is not this stage's to replace (a user's folder, another stage's output,
    the working directory) or that another run is writing now."""


def check_replaceable(target: str | Path, owner: str | None) -> None:
    """Refuse (:class:`OutputPathError`) unless ``target`` may be replaced by an output of ``owner``:
    absent, an empty folder, a file (when replaced by a file), or a folder whose :data:`OUTPUT_MARKER`
    names ``owner``. Never the working directory or a folder holding it."""
    target = Path(target)
    resolved = target.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise OutputPathError(
            f"{target}: the output path is the working directory or holds it; refusing to replace it. "
            "Choose an output folder of its own (e.g. data/<stage>)"
        )
    if target.is_symlink() or not target.is_dir() or not any(target.iterdir()):
        return
    marker = target / OUTPUT_MARKER
    found = marker.read_text().strip() if marker.is_file() else None
    if owner is None or found != owner:
        what = f"the {found} stage's output" if found else f"not an earlier output (no {OUTPUT_MARKER} file)"
        raise OutputPathError(
            f"{target}: {what}, so the {owner or 'writer'} stage will not replace it. "
            "Choose another output path, or delete the folder yourself if it is yours to lose"
        )


@contextmanager
def _writer_lock(target: Path) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside ``target`` for the writer's whole run (released by the kernel if it is
    killed); a second writer of the same target is refused rather than deleting the first one's temporary.

    The lock file is deleted when released (so no litter is left beside the output); a writer that
    locked a file just deleted by the previous one sees it is no longer at the path and tries again.
    """
    import fcntl

    path = target.parent / f".{target.name}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputPathError(
                f"{target}: another run is writing it now ({path} is locked); wait for it, or choose another output"
            ) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _new_temporary(target: Path) -> Path:
    """A free ``.<name>.XXXXXXXX.tmp`` path beside ``target`` (nothing created there)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.rmdir()
    return tmp


def replace_into(source: Path, target: Path, owner: str | None) -> None:
    """Rename ``source`` onto ``target``; a folder written by ``owner`` gets :data:`OUTPUT_MARKER` first.

    An existing folder at ``target`` (checked again: :func:`check_replaceable`) is moved aside,
    ``source`` renamed in, then the aside copy deleted, so no moment leaves neither in place but the
    two renames'.
    """
    if source.is_dir() and owner is not None:
        (source / OUTPUT_MARKER).write_text(owner + "\n")
    if target.is_dir() and not target.is_symlink():
        check_replaceable(target, owner)
        aside = _new_temporary(target)
        os.replace(target, aside)
        os.replace(source, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(source, target)


@contextmanager
def atomic_path(target: str | Path, *, clean_stale: bool = False, owner: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    Works for files and folders: write whatever you like at the yielded path. A folder written
    with an ``owner`` (the stage's name) gets :data:`OUTPUT_MARKER`, and an existing non-empty
    folder is replaced only if its marker names the same owner (:func:`check_replaceable`:
    checked on entry, before any work, and again before the rename), so ``--out`` can never delete
    a user's folder. The old folder is moved aside, the new one renamed in, then the old deleted:
    a kill leaves the old output or the new one at ``target``, and the aside copy as a stale
    temporary. On an exception the temporary is removed and ``target`` is left untouched.

    A SIGKILL leaves the temporary (``.<name>.XXXXXXXX.tmp``) behind: with ``clean_stale`` (a
    stage's own output) the writer holds ``.<name>.lock`` for its run, refuses to start while
    another holds it, and removes earlier runs' temporaries, which no live writer can own.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    check_replaceable(target, owner)
    with _writer_lock(target) if clean_stale else contextlib.nullcontext():
        if clean_stale:
            remove_stale_temporaries(target)
        tmp = _new_temporary(target)
        try:
            yield tmp
            replace_into(tmp, target, owner)
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

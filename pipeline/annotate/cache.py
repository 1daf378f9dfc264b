"""Content-addressed cache of annotate answers: a rerun queries nothing it already has.

The key is the SHA-256 of (cache format version, SHA-256 of the frame's pixels
with its shape, backend name, model identity, rendered prompt). Params that do
not change the answer (``every_k``, ``concurrency``, timeouts, ...) are not part
of it, so changing them re-queries nothing already answered.

An entry holds the result (``ok`` with its annotation, or ``failed`` with the
model's raw answer and why it is invalid) and ``runs``: how many runs asked for
it. A failed entry is not the last word: the runner asks again in later runs
until ``annotate.max_invalid_runs`` runs got invalid answers (entries written
before ``runs`` existed count as one run).

One small JSON file per entry, ``<cache_dir>/<key[:2]>/<key>.json``, written to
a temporary sibling and renamed into place: an interrupted run leaves either the
whole entry or none. Entries are not fsynced (that would cap a run at a few
hundred frames/s here); instead a reader re-validates every entry (its key, and
the annotation schema, boxes inside the frame) and treats anything else as a miss, so a file torn by an
OS crash, or damaged outside this code, is queried again, never served.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from pipeline.annotate.base import FrameItem, FrameResult
from pipeline.annotate.schema import Annotation, frame_context
from pipeline.common.io import dumps_json

log = logging.getLogger(__name__)

#: Bump when the entry format or the meaning of a key changes: old entries become misses.
CACHE_VERSION = 1


def frame_digest(image: np.ndarray) -> str:
    """SHA-256 (hex) of a frame's pixels, its shape and dtype."""
    image = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{image.dtype.str}{image.shape}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def cache_key(image: np.ndarray, backend: str, model_key: str, prompt: str) -> str:
    """The cache key of one query (hex SHA-256)."""
    payload = json.dumps([CACHE_VERSION, frame_digest(image), backend, model_key, prompt])
    return hashlib.sha256(payload.encode()).hexdigest()


class AnnotationCache:
    """Finished answers on disk, by key. ``root=None`` disables the cache (every lookup misses)."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root).expanduser() if root is not None else None
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self._dirs: set[Path] = set()

    def path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.json"

    def get(self, item: FrameItem) -> FrameResult | None:
        """The cached result for ``item`` (whose ``key`` is set), or None; its item's ``rerun`` is the
        entry's runs - 1."""
        entry = self._read(item.key, item.frame_size)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        context = frame_context(item.frame_size)
        annotation = (
            Annotation.model_validate(entry["annotation"], context=context) if entry["annotation"] is not None else None
        )
        item = dataclasses.replace(item, rerun=entry.get("runs", 1) - 1)
        return FrameResult(item, entry["status"], annotation, entry["raw"], entry["error"], final=True, calls=0)

    def _read(self, key: str, frame_size: tuple[int, int]) -> dict[str, Any] | None:
        if self.root is None:
            return None
        path = self.path(key)
        try:
            entry = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("annotate cache: ignoring unreadable entry %s (%s)", path, exc)
            return None
        try:
            if entry["version"] != CACHE_VERSION or entry["key"] != key or entry["status"] not in ("ok", "failed"):
                raise ValueError("key, version or status mismatch")
            if (entry["status"] == "ok") != (entry["annotation"] is not None):
                raise ValueError("status and annotation disagree")
            if entry["annotation"] is not None:
                Annotation.model_validate(entry["annotation"], context=frame_context(frame_size))
            runs = entry.get("runs", 1)
            if not isinstance(runs, int) or isinstance(runs, bool) or runs < 1:
                raise ValueError(f"runs {runs!r} is not a positive integer")
            for field in ("raw", "error"):
                if entry[field] is not None and not isinstance(entry[field], str):
                    raise ValueError(f"{field} is not a string")
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            log.warning("annotate cache: ignoring invalid entry %s (%s)", path, exc)
            return None
        return entry

    def put(self, result: FrameResult) -> bool:
        """Store a final result atomically; non-final failures are not cached. True if written."""
        if self.root is None or not result.final:
            return False
        entry = {
            "version": CACHE_VERSION,
            "key": result.item.key,
            "status": result.status,
            "annotation": result.annotation.to_json() if result.annotation is not None else None,
            "raw": result.raw,
            "error": result.error,
            "runs": result.runs,
        }
        path = self.path(result.item.key)
        if path.parent not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(dumps_json(entry).encode())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.writes += 1
        return True

"""Digests of the project's own source: what a cache entry records so that a change of the code that made it
invalidates it (the evaluate run cache, the finetune resume checkpoints)."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@cache
def source_digest(entries: tuple[str, ...]) -> str:
    """SHA-256 (hex) over the Python files of ``entries`` (repository-relative files or folders): their paths
    and bytes, in sorted order."""
    digest = hashlib.sha256()
    for entry in entries:
        path = ROOT / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            digest.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()

"""Deterministic WebDataset shard writing (webdataset's ``ShardWriter``).

Byte-identical output for identical samples: fixed member mtime, owner and
mode; members of a sample sorted by name (``TarWriter`` does this); samples in
the order given; shard boundaries from ``maxcount`` / ``maxsize`` only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from pipeline.encode.schema import SHARD_PATTERN
from pipeline.io import sha256_of

#: Fixed tar member metadata (mtime in seconds since the epoch; an int: a float adds a PAX header per member).
TAR_MTIME = 0
TAR_USER = "semore"
TAR_GROUP = "semore"
TAR_MODE = 0o444


@dataclass(frozen=True)
class ShardInfo:
    """One written shard: file name within its split folder, sample count, size (bytes), SHA-256."""

    name: str
    samples: int
    bytes: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)




def write_shards(samples: Iterable[dict[str, Any]], folder: str | Path, *, maxcount: int, maxsize_bytes: float) -> list[ShardInfo]:
    """Write ``samples`` (``__key__`` plus bytes per field) to ``folder/shard-<n:06d>.tar``.

    A shard closes once it holds ``maxcount`` samples or ``maxsize_bytes`` of payload.
    No file is created when ``samples`` is empty. Returns the shards in order.
    """
    import webdataset as wds

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    counts: list[tuple[str, int]] = []
    writer: wds.ShardWriter | None = None

    def closed(fname: str) -> None:
        assert writer is not None
        counts.append((fname, writer.count))

    iterator = iter(samples)
    first = next(iterator, None)
    if first is None:
        return []
    writer = wds.ShardWriter(
        str(folder / SHARD_PATTERN),
        maxcount=maxcount,
        maxsize=maxsize_bytes,
        post=closed,
        verbose=0,
        encoder=False,
        mtime=TAR_MTIME,
        user=TAR_USER,
        group=TAR_GROUP,
        mode=TAR_MODE,
    )
    with writer:
        writer.write(first)
        for sample in iterator:
            writer.write(sample)
    shards = []
    for fname, count in counts:
        path = Path(fname)
        shards.append(ShardInfo(path.name, count, path.stat().st_size, sha256_of(path)))
    return shards

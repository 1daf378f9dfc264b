"""Write a dataset folder: deterministic WebDataset shards per split, then ``stats.json`` and the card.

Byte-identical output for identical samples: fixed member mtime, owner and mode; members of a
sample sorted by name (webdataset's ``TarWriter`` does this); samples in the order written;
shard boundaries from ``maxcount`` / ``maxsize`` only. ``stats.json`` is strict JSON (a NaN or
infinity is refused, naming the entry), so any JSON parser reads it.

Typical use (the encode stage; tests build their datasets the same way)::

    sink = ShardSink(folder / "train", maxcount=1000, maxsize_bytes=1e9)
    for sample in samples:                  # codec.encode_sample(...) dicts
        sink.write(sample)
    shards = {"train": sink.close(), ...}
    write_metadata(folder, split_summary(shards, ...), stats, provenance, card_text)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.common.io import sha256_of, write_bytes_atomic, write_json_atomic
from pipeline.dataset.schema import CARD_FILE, SCHEMA_VERSION, SHARD_PATTERN, STATS_FILE, DatasetError

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


class ShardSink:
    """Writes samples to ``folder/shard-<n:06d>.tar``, a new shard every ``maxcount`` samples or
    ``maxsize_bytes`` of payload. Nothing is created until the first sample; :meth:`close`
    returns the shards written, in order."""

    def __init__(self, folder: str | Path, *, maxcount: int, maxsize_bytes: float) -> None:
        self.folder = Path(folder)
        self.maxcount = maxcount
        self.maxsize_bytes = maxsize_bytes
        self._writer: Any = None
        self._closed: list[tuple[str, int]] = []

    def _on_shard_closed(self, fname: str) -> None:
        self._closed.append((fname, self._writer.count))

    def write(self, sample: dict[str, Any]) -> None:
        """Add one sample (``__key__`` plus bytes per field)."""
        if self._writer is None:
            import webdataset as wds

            self.folder.mkdir(parents=True, exist_ok=True)
            self._writer = wds.ShardWriter(
                str(self.folder / SHARD_PATTERN),
                maxcount=self.maxcount,
                maxsize=self.maxsize_bytes,
                post=self._on_shard_closed,
                verbose=0,
                encoder=False,
                mtime=TAR_MTIME,
                user=TAR_USER,
                group=TAR_GROUP,
                mode=TAR_MODE,
            )
        self._writer.write(sample)

    def close(self) -> list[ShardInfo]:
        """Finish the last shard; the shards written (name, samples, bytes, SHA-256), in order."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        shards = []
        for fname, count in self._closed:
            path = Path(fname)
            shards.append(ShardInfo(path.name, count, path.stat().st_size, sha256_of(path)))
        return shards


def _first_non_finite(tree: Any, where: str = "") -> str | None:
    """Path of the first NaN / infinity in a JSON tree, or None."""
    if isinstance(tree, float) and not math.isfinite(tree):
        return where or "<root>"
    if isinstance(tree, dict):
        items: Any = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return None
    for key, value in items:
        found = _first_non_finite(value, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def write_metadata(
    folder: str | Path,
    splits: dict[str, dict[str, Any]],
    stats: dict[str, Any],
    provenance: dict[str, Any],
    card: str,
) -> None:
    """Write ``stats.json`` and the card (``README.md``) of a dataset folder whose shards are written.

    Args:
        splits: split -> ``{"samples", "episodes", "shards": [ShardInfo.to_json(), ...]}``: what readers open.
        stats: split -> per-field statistics (the encode stage's ``SplitStats.to_json()``).
        provenance: how the dataset was made (params, models, upstream stages).
        card: the card's full text (YAML header and Markdown body).

    Raises:
        DatasetError: a statistic or provenance entry is NaN or infinite (not JSON), named.
    """
    folder = Path(folder)
    body = {"schema_version": SCHEMA_VERSION, "splits": splits, "stats": stats, "provenance": provenance}
    bad = _first_non_finite(body)
    if bad:
        raise DatasetError(
            f"{folder / STATS_FILE}: {bad} is not finite (NaN or infinity is not JSON); "
            "an input holds non-finite values"
        )
    json.dumps(body, allow_nan=False, default=str)  # the same check, by the JSON encoder itself
    write_json_atomic(folder / STATS_FILE, body)
    write_bytes_atomic(folder / CARD_FILE, card.encode())

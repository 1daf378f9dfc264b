"""Reading a WebDataset shard (a tar of ``<key>.<field>`` members): the one tar reader of the dataset package.

:func:`iter_tar_samples` checks that the tar is complete before reading it, then yields each sample's
members as bytes; decoding them is :mod:`pipeline.dataset.codec`'s job. Used by :mod:`~pipeline.dataset.reader`
(validation) and :mod:`~pipeline.dataset.stacked` (training).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.dataset.schema import DatasetError


def _check_tar_end(shard: Path) -> None:
    """A complete tar is whole 512-byte blocks ending in (at least) two zero blocks; tarfile reads a
    truncated one without complaint, so this is checked up front."""
    try:
        size = shard.stat().st_size
        with open(shard, "rb") as fh:
            fh.seek(max(size - 1024, 0))
            tail = fh.read()
    except OSError as exc:
        raise DatasetError(f"{shard}: unreadable ({exc}); rebuild or pull the dataset again") from exc
    if size < 1024 or size % 512 or tail.strip(b"\0"):
        raise DatasetError(
            f"{shard}: truncated or not a tar file (no end-of-archive blocks); rebuild or pull the dataset again"
        )


def iter_tar_samples(shard: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {field: bytes}) for each sample of a shard, in stored order.

    Raises:
        DatasetError: unreadable tar, a member name without ``<key>.<field>``, or a key split across the shard.
    """
    current: str | None = None
    fields: dict[str, bytes] = {}
    seen: set[str] = set()
    _check_tar_end(shard)
    try:
        with tarfile.open(shard, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name
                base = name.rsplit("/", 1)[-1]
                if "." not in base:
                    raise DatasetError(
                        f"{shard}: member {name!r} has no '.<field>' suffix; the shard is not in WebDataset format"
                    )
                key, field = base.split(".", 1)
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else b""
                if len(data) != member.size:
                    raise DatasetError(
                        f"{shard}: member {name!r} is truncated ({len(data)} of {member.size} bytes); "
                        "rebuild or pull the dataset again"
                    )
                if key != current:
                    if current is not None:
                        yield current, fields
                    if key in seen:
                        raise DatasetError(
                            f"{shard}: sample {key!r} appears in two places; its members must be contiguous"
                        )
                    seen.add(key)
                    current, fields = key, {}
                if field in fields:
                    raise DatasetError(f"{shard}: sample {key!r} has field {field!r} twice")
                fields[field] = data
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(
            f"{shard}: corrupt or truncated tar ({type(exc).__name__}: {exc}) after sample {current!r}; "
            "rebuild or pull the dataset again"
        ) from exc
    if current is not None:
        yield current, fields

"""Read and validate an encoded dataset folder (ours, or one pulled from the Hub).

:func:`validate_dataset` checks every shard listed in ``stats.json``: present,
a readable tar, every sample with exactly the schema's fields (and, with
``decode=True``, the documented shapes and dtypes), the listed sample count and
SHA-256. A problem raises :class:`DatasetError` naming the shard and the key.
:func:`decode_sample` turns one sample's raw bytes into numpy arrays and a dict.
"""
from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline.encode.schema import FIELDS, JSON_DOCS, SHARD_GLOB, SPLITS, TEXT_ROWS, parse_key
from pipeline.errors import UserError
from pipeline.io import sha256_of


class DatasetError(UserError, ValueError):
    """A dataset folder is incomplete or corrupt; the message names the shard (and sample key)."""


@dataclass(frozen=True)
class DatasetCheck:
    """Result of :func:`validate_dataset`: samples and shard files per split, embedding size D."""

    folder: Path
    samples: dict[str, int]
    shards: dict[str, list[Path]]
    embed_dim: int | None


def read_stats(folder: str | Path) -> dict[str, Any]:
    """``stats.json`` of a dataset folder (splits, shard list, statistics, provenance)."""
    path = Path(folder) / "stats.json"
    if not Path(folder).is_dir():
        raise DatasetError(f"{folder}: no such dataset folder; run semore encode, or semore pull --repo-id <user/name> --out {folder}")
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path} is missing: not a complete semore dataset folder; rebuild it (semore encode) or pull it again") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable ({exc}); rebuild it (semore encode) or pull it again") from exc


def shard_paths(folder: str | Path, split: str) -> list[Path]:
    """Shard files of ``split`` in order, as listed in ``stats.json``."""
    stats = read_stats(folder)
    return [Path(folder) / split / s["name"] for s in stats["splits"].get(split, {}).get("shards", [])]


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
        raise DatasetError(f"{shard}: truncated or not a tar file (no end-of-archive blocks); rebuild or pull the dataset again")


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
                    raise DatasetError(f"{shard}: member {name!r} has no '.<field>' suffix; the shard is not in WebDataset format")
                key, field = base.split(".", 1)
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else b""
                if len(data) != member.size:
                    raise DatasetError(f"{shard}: member {name!r} is truncated ({len(data)} of {member.size} bytes); rebuild or pull the dataset again")
                if key != current:
                    if current is not None:
                        yield current, fields
                    if key in seen:
                        raise DatasetError(f"{shard}: sample {key!r} appears in two places; its members must be contiguous")
                    seen.add(key)
                    current, fields = key, {}
                if field in fields:
                    raise DatasetError(f"{shard}: sample {key!r} has field {field!r} twice")
                fields[field] = data
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"{shard}: corrupt or truncated tar ({type(exc).__name__}: {exc}) after sample {current!r}; rebuild or pull the dataset again") from exc
    if current is not None:
        yield current, fields


def decode_sample(fields: dict[str, bytes]) -> dict[str, Any]:
    """Decode one sample's members: ``rgb`` (H, W, 3) uint8, ``flow`` (2, H, W) float16, ``flowvalid`` (H, W) bool,
    ``clipimage`` (D,) float16, ``cliptext`` (2, D) float16, ``json`` dict (keys without their extension)."""
    from PIL import Image

    with Image.open(io.BytesIO(fields["rgb.png"])) as im:
        rgb = np.asarray(im.convert("RGB"))
    out: dict[str, Any] = {"rgb": rgb, "json": json.loads(fields["json"])}
    for name in ("flow", "flowvalid", "clipimage", "cliptext"):
        out[name] = np.load(io.BytesIO(fields[f"{name}.npy"]), allow_pickle=False)
    return out


def _check_decoded(sample: dict[str, Any], where: str, dims: dict[str, int]) -> None:
    """Shapes and dtypes of a decoded sample; ``dims`` fixes D (and H, W per sample)."""
    rgb = sample["rgb"]
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise DatasetError(f"{where}: rgb.png decodes to {rgb.shape} {rgb.dtype}, expected (H, W, 3) uint8")
    h, w = rgb.shape[:2]
    expected = {
        "flow": ((2, h, w), np.float16),
        "flowvalid": ((h, w), np.bool_),
        "clipimage": ((dims.setdefault("D", sample["clipimage"].shape[0]),), np.float16),
        "cliptext": ((len(TEXT_ROWS), dims["D"]), np.float16),
    }
    for name, (shape, dtype) in expected.items():
        value = sample[name]
        if value.shape != shape or value.dtype != dtype:
            raise DatasetError(f"{where}: {name}.npy is {value.shape} {value.dtype}, expected {shape} {np.dtype(dtype)}")
    record = sample["json"]
    top = {k.split(".")[0] for k in JSON_DOCS}
    if not isinstance(record, dict) or set(record) != top:
        got = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DatasetError(f"{where}: json keys {got}, expected {sorted(top)}")
    annotation_keys = {k.split(".", 1)[1] for k in JSON_DOCS if k.startswith("annotation.")}
    if not isinstance(record["annotation"], dict) or set(record["annotation"]) != annotation_keys:
        raise DatasetError(f"{where}: json.annotation must have exactly the keys {sorted(annotation_keys)}")




def validate_dataset(folder: str | Path, *, decode: bool = True, check_hashes: bool = True) -> DatasetCheck:
    """Check a dataset folder end to end; see the module docstring. Returns what was found.

    Raises:
        DatasetError: naming the shard, and the sample key where one is at fault.
    """
    folder = Path(folder)
    stats = read_stats(folder)
    if not (folder / "README.md").is_file():
        raise DatasetError(f"{folder / 'README.md'} (the dataset card) is missing; rebuild it (semore encode) or pull it again")
    splits = stats.get("splits")
    if not isinstance(splits, dict) or not splits.get("train", {}).get("shards"):
        raise DatasetError(f"{folder / 'stats.json'}: lists no train shards; rebuild the dataset (semore encode)")
    samples: dict[str, int] = {}
    shards: dict[str, list[Path]] = {}
    dims: dict[str, int] = {}
    for split in SPLITS:
        listed = splits.get(split, {}).get("shards", [])
        names = {s["name"] for s in listed}
        extra = sorted(p.name for p in (folder / split).glob(SHARD_GLOB) if p.name not in names)
        if extra:
            raise DatasetError(f"{folder / split}: shard(s) {', '.join(extra)} are not listed in stats.json; remove them or rebuild the dataset")
        samples[split], shards[split] = 0, []
        for info in listed:
            path = folder / split / info["name"]
            if not path.is_file():
                raise DatasetError(f"{path}: shard missing (listed in stats.json with {info['samples']} samples); pull or rebuild the dataset")
            count = 0
            for key, fields in iter_tar_samples(path):
                where = f"{path}: sample {key!r}"
                try:
                    parse_key(key)
                except ValueError as exc:
                    raise DatasetError(f"{where}: {exc}") from None
                missing = sorted(set(FIELDS) - set(fields))
                unexpected = sorted(set(fields) - set(FIELDS))
                if missing or unexpected:
                    raise DatasetError(f"{where}: missing field(s) {missing}, unexpected {unexpected}; every sample needs {list(FIELDS)}")
                if decode:
                    try:
                        decoded = decode_sample(fields)
                    except (OSError, ValueError, json.JSONDecodeError) as exc:
                        raise DatasetError(f"{where}: a field does not decode ({type(exc).__name__}: {exc})") from exc
                    _check_decoded(decoded, where, dims)
                count += 1
            if count != info["samples"]:
                raise DatasetError(f"{path}: {count} samples, stats.json lists {info['samples']}; the shard is truncated or stale")
            if check_hashes and sha256_of(path) != info["sha256"]:
                raise DatasetError(f"{path}: SHA-256 differs from stats.json; the shard is corrupt or was modified; pull or rebuild the dataset")
            samples[split] += count
            shards[split].append(path)
    return DatasetCheck(folder, samples, shards, dims.get("D"))

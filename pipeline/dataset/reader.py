"""Open, validate and read a dataset folder (ours, or one pulled from the Hub).

:func:`open_dataset` is the one entry point: it reads ``stats.json`` (the shard list is taken
from there, never from a glob), checks the layout (card present, every listed shard present
with its listed size, no unlisted shard, optionally every shard's SHA-256), decodes the first
sample to learn the frame size and the CLIP dimension, and returns a :class:`Dataset`.
:func:`validate_dataset` does the same and then reads every sample (every field present, and
with ``decode=True`` the documented shapes and dtypes; the listed sample counts). A problem
raises :class:`DatasetError` naming the shard, the sample key where one is at fault, and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.common.io import sha256_of
from pipeline.dataset.codec import decode_sample
from pipeline.dataset.schema import (
    CARD_FILE,
    FIELDS,
    JSON_DOCS,
    SCHEMA_VERSION,
    SHARD_GLOB,
    SPLITS,
    STATS_FILE,
    TEXT_ROWS,
    DatasetError,
    parse_key,
)
from pipeline.dataset.shards import iter_tar_samples

if TYPE_CHECKING:  # torch is imported only when frames() is called
    from pipeline.dataset.stacked import StackedFrames

_FIX = "rebuild the dataset (semore encode) or pull it again (semore pull)"


@dataclass(frozen=True)
class Dataset:
    """An opened, validated dataset folder.

    Attributes:
        folder: the dataset folder.
        shards: split -> shard paths in order (from ``stats.json``).
        samples: split -> number of samples (frames).
        height, width: frame size in pixels; embed_dim: CLIP embedding size D.
        stats: the whole ``stats.json`` (``stats[split]["fields"]`` holds per-field statistics).
    """

    folder: Path
    shards: dict[str, tuple[Path, ...]]
    samples: dict[str, int]
    height: int
    width: int
    embed_dim: int
    stats: dict[str, Any] = field(repr=False)

    @property
    def image_size(self) -> int:
        """The side of the (square) frames; raises :class:`DatasetError` when they are not square."""
        if self.height != self.width:
            raise DatasetError(
                f"{self.folder}: frames are {self.width}x{self.height}; "
                "the backbone needs square frames (set collect.image_size)"
            )
        return self.height

    def field_stats(self, split: str = "train") -> dict[str, Any]:
        """Per-field statistics of ``split`` (count, mean, std, min, max; see the card)."""
        return self.stats.get("stats", {}).get(split, {}).get("fields", {})

    def frames(self, split: str = "train", frame_stack: int = 3, **kwargs: Any) -> StackedFrames:
        """Stacked-frame samples of ``split`` (:class:`pipeline.dataset.stacked.StackedFrames`,
        a torch IterableDataset)."""
        from pipeline.dataset.stacked import StackedFrames

        return StackedFrames(self.shards[split], frame_stack, **kwargs)


def read_stats(folder: str | Path) -> dict[str, Any]:
    """``stats.json`` of a dataset folder (splits, shard list, statistics, provenance), structure checked.

    Raises:
        DatasetError: no such folder, no ``stats.json``, unreadable, another schema version, or no train shards.
    """
    folder = Path(folder)
    path = folder / STATS_FILE
    if not folder.is_dir():
        raise DatasetError(
            f"{folder}: no such dataset folder; run the encode stage (semore encode), "
            f"or semore pull --repo-id <user/name> --out {folder}"
        )
    try:
        stats = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path} is missing: not a complete semore dataset folder; {_FIX}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable ({exc}); {_FIX}") from exc
    if not isinstance(stats, dict) or stats.get("schema_version") != SCHEMA_VERSION:
        got = stats.get("schema_version") if isinstance(stats, dict) else type(stats).__name__
        raise DatasetError(f"{path}: schema_version {got!r}, this code reads {SCHEMA_VERSION}; {_FIX}")
    splits = stats.get("splits")
    if not isinstance(splits, dict) or not splits.get("train", {}).get("shards"):
        raise DatasetError(f"{path}: lists no train shards; {_FIX}")
    for split, info in splits.items():
        listed = info.get("shards") if isinstance(info, dict) else None
        if (
            split not in SPLITS
            or not isinstance(listed, list)
            or not all(isinstance(s, dict) and {"name", "samples", "bytes", "sha256"} <= set(s) for s in listed)
        ):
            raise DatasetError(
                f"{path}: splits.{split} is not a list of shards with name, samples, bytes, sha256; {_FIX}"
            )
    return stats


def _check_decoded(sample: dict[str, Any], where: str, dims: dict[str, int]) -> None:
    """Shapes and dtypes of a decoded sample; ``dims`` fixes H, W and D from the first sample."""
    rgb = sample["rgb"]
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise DatasetError(f"{where}: rgb.png decodes to {rgb.shape} {rgb.dtype}, expected (H, W, 3) uint8")
    h, w = rgb.shape[:2]
    expected = {
        "flow": ((2, h, w), np.float32),
        "flowvalid": ((h, w), np.bool_),
        "clipimage": ((dims.setdefault("D", sample["clipimage"].shape[0]),), np.float16),
        "cliptext": ((len(TEXT_ROWS), dims["D"]), np.float16),
    }
    for name, (shape, dtype) in expected.items():
        value = sample[name]
        if value.shape != shape or value.dtype != dtype:
            field = "flow.png" if name.startswith("flow") else "clip.npy"
            raise DatasetError(
                f"{where}: {field} ({name}) is {value.shape} {value.dtype}, expected {shape} {np.dtype(dtype)}"
            )
    record = sample["json"]
    top = {k.split(".")[0] for k in JSON_DOCS}
    if not isinstance(record, dict) or set(record) != top:
        got = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DatasetError(f"{where}: json keys {got}, expected {sorted(top)}")
    annotation_keys = {k.split(".", 1)[1] for k in JSON_DOCS if k.startswith("annotation.")}
    if not isinstance(record["annotation"], dict) or set(record["annotation"]) != annotation_keys:
        raise DatasetError(f"{where}: json.annotation must have exactly the keys {sorted(annotation_keys)}")
    dims.setdefault("H", h)
    dims.setdefault("W", w)


def check_sample(
    key: str, fields: dict[str, bytes], where: str, dims: dict[str, int], *, decode: bool = True
) -> dict[str, Any] | None:
    """Check one raw sample (key form, exactly the schema's fields; decoded shapes and dtypes when ``decode``).

    Returns the decoded sample (``codec.decode_sample``) when ``decode``, else None.

    Raises:
        DatasetError: naming ``where`` (shard and key) and what is wrong.
    """
    try:
        parse_key(key)
    except ValueError as exc:
        raise DatasetError(f"{where}: {exc}") from None
    missing = sorted(set(FIELDS) - set(fields))
    unexpected = sorted(set(fields) - set(FIELDS))
    if missing or unexpected:
        raise DatasetError(
            f"{where}: missing field(s) {missing}, unexpected {unexpected}; every sample needs {list(FIELDS)}; {_FIX}"
        )
    if not decode:
        return None
    try:
        decoded = decode_sample(fields)
    except (OSError, ValueError, SyntaxError) as exc:  # PIL raises SyntaxError on some corrupt PNGs
        raise DatasetError(f"{where}: a field does not decode ({type(exc).__name__}: {exc}); {_FIX}") from exc
    _check_decoded(decoded, where, dims)
    return decoded


def _check_layout(folder: Path, stats: dict[str, Any], check_hashes: bool) -> dict[str, tuple[Path, ...]]:
    """Card present; every listed shard present (with ``check_hashes``: its listed size and SHA-256);
    no unlisted shard."""
    if not (folder / CARD_FILE).is_file():
        raise DatasetError(f"{folder / CARD_FILE} (the dataset card) is missing; {_FIX}")
    shards: dict[str, tuple[Path, ...]] = {}
    for split in SPLITS:
        listed = stats["splits"].get(split, {}).get("shards", [])
        names = {s["name"] for s in listed}
        extra = sorted(p.name for p in (folder / split).glob(SHARD_GLOB) if p.name not in names)
        if extra:
            raise DatasetError(
                f"{folder / split}: shard(s) {', '.join(extra)} are not listed in {STATS_FILE}; remove them or {_FIX}"
            )
        paths = []
        for info in listed:
            path = folder / split / info["name"]
            if not path.is_file():
                raise DatasetError(
                    f"{path}: shard missing (listed in {STATS_FILE} with {info['samples']} samples); {_FIX}"
                )
            size = path.stat().st_size
            if check_hashes and size != info["bytes"]:
                raise DatasetError(
                    f"{path}: {size} bytes, {STATS_FILE} lists {info['bytes']}; "
                    f"the shard is truncated or was modified; {_FIX}"
                )
            if check_hashes and sha256_of(path) != info["sha256"]:
                raise DatasetError(
                    f"{path}: SHA-256 differs from {STATS_FILE}; the shard is corrupt or was modified; {_FIX}"
                )
            paths.append(path)
        shards[split] = tuple(paths)
    return shards


def open_dataset(folder: str | Path, *, check_hashes: bool = True) -> Dataset:
    """Open a dataset folder, validated: ``stats.json``, card, listed shards (size and SHA-256 unless
    ``check_hashes`` is false), first sample.

    This is the public way to read a dataset from one's own training code::

        from pipeline.dataset import open_dataset
        ds = open_dataset("data/dataset")            # validated once, here
        loader = ds.frames("train", frame_stack=3)   # torch IterableDataset of stacked frames

    Raises:
        DatasetError: naming the file (and sample) at fault and the fix.
    """
    folder = Path(folder)
    stats = read_stats(folder)
    shards = _check_layout(folder, stats, check_hashes)
    first = shards["train"][0]
    dims: dict[str, int] = {}
    for key, fields in iter_tar_samples(first):
        check_sample(key, fields, f"{first}: sample {key!r}", dims)
        break
    else:
        raise DatasetError(
            f"{first}: no samples, {STATS_FILE} lists {stats['splits']['train']['shards'][0]['samples']}; {_FIX}"
        )
    samples = {split: sum(s["samples"] for s in stats["splits"].get(split, {}).get("shards", [])) for split in SPLITS}
    return Dataset(folder, shards, samples, dims["H"], dims["W"], dims["D"], stats)


def validate_dataset(folder: str | Path, *, decode: bool = True, check_hashes: bool = True) -> Dataset:
    """:func:`open_dataset`, then every sample of every shard: the schema's fields (decoded shapes and
    dtypes with ``decode``) and the listed sample counts. What push and pull run before trusting a folder.

    Raises:
        DatasetError: naming the shard, and the sample key where one is at fault.
    """
    dataset = open_dataset(folder, check_hashes=check_hashes)
    dims = {"H": dataset.height, "W": dataset.width, "D": dataset.embed_dim}
    listed = {split: dataset.stats["splits"].get(split, {}).get("shards", []) for split in SPLITS}
    for split in SPLITS:
        for path, info in zip(dataset.shards[split], listed[split], strict=True):
            count = 0
            for key, fields in iter_tar_samples(path):
                check_sample(key, fields, f"{path}: sample {key!r}", dims, decode=decode)
                count += 1
            if count != info["samples"]:
                raise DatasetError(
                    f"{path}: {count} samples, {STATS_FILE} lists {info['samples']}; "
                    f"the shard is truncated or stale; {_FIX}"
                )
    return dataset

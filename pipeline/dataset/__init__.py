"""The dataset package: one owner of the shard format, for the stage that writes it and every reader.

* :mod:`~pipeline.dataset.schema`: folder layout, sample keys, fields (shapes, dtypes, units), ``DatasetError``;
* :mod:`~pipeline.dataset.codec`: bytes <-> arrays for each field;
* :mod:`~pipeline.dataset.writer`: deterministic shards, ``stats.json`` and the card
  (the encode stage writes through it);
* :mod:`~pipeline.dataset.reader`: :func:`open_dataset` (validated once, on open; the shard list from ``stats.json``)
  and :func:`validate_dataset` (every sample);
* :mod:`~pipeline.dataset.stacked`: the PyTorch-facing stacked-frame dataset and loader (imports torch);
* :mod:`~pipeline.dataset.hub`: push to / pull from the Hugging Face Hub.

From one's own training code::

    from pipeline.dataset import open_dataset
    ds = open_dataset("data/dataset")                 # or a folder pulled with `semore pull`
    for sample in ds.frames("train", frame_stack=3):  # obs (9, H, W) uint8, flow, clip targets, reward
        ...
"""

from __future__ import annotations

from typing import Any

from pipeline.dataset.reader import Dataset, open_dataset, validate_dataset
from pipeline.dataset.schema import (
    FIELD_DOCS,
    FIELDS,
    JSON_DOCS,
    SPLITS,
    DatasetError,
    hf_features,
    make_key,
    parse_key,
)

__all__ = [
    "FIELDS",
    "FIELD_DOCS",
    "JSON_DOCS",
    "SPLITS",
    "Dataset",
    "DatasetError",
    "StackedFrames",
    "hf_features",
    "make_key",
    "make_loader",
    "open_dataset",
    "parse_key",
    "validate_dataset",
]


def __getattr__(name: str) -> Any:
    if name in ("StackedFrames", "make_loader"):  # imports torch: only when asked for
        from pipeline.dataset import stacked

        return getattr(stacked, name)
    raise AttributeError(f"module 'pipeline.dataset' has no attribute {name!r}")

"""Encode stage: CLIP targets and WebDataset shards, a dataset card, Hub push/pull.

Library entry points:

* :func:`build_dataset` (``pipeline.encode.build``): episodes + flow + annotations -> dataset folder;
* :func:`validate_dataset`, :func:`decode_sample` (``pipeline.encode.reader``): check / read shards;
* :func:`push_dataset`, :func:`pull_dataset`, :func:`resolve_dataset` (``pipeline.encode.hub``);
* the sample schema (``pipeline.encode.schema``): ``FIELDS``, ``SPLITS``, ``make_key``, ``hf_features``.
"""
from __future__ import annotations

from pipeline.encode.build import DatasetSummary, assign_splits, build_dataset
from pipeline.encode.hub import pull_dataset, push_dataset, resolve_dataset
from pipeline.encode.reader import DatasetCheck, DatasetError, decode_sample, validate_dataset
from pipeline.encode.schema import FIELD_DOCS, FIELDS, JSON_DOCS, SPLITS, hf_features, make_key, parse_key

__all__ = [
    "FIELDS",
    "FIELD_DOCS",
    "JSON_DOCS",
    "SPLITS",
    "DatasetCheck",
    "DatasetError",
    "DatasetSummary",
    "assign_splits",
    "build_dataset",
    "decode_sample",
    "hf_features",
    "make_key",
    "parse_key",
    "pull_dataset",
    "push_dataset",
    "resolve_dataset",
    "validate_dataset",
]

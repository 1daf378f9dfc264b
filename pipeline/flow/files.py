"""The flow file: what the flow stage writes for each episode and the encode stage reads.

``<out>/episode_<i:06d>.npz`` (the same name as its episode), written atomically with
deterministic bytes (:func:`pipeline.common.io.write_npz_atomic`; ``flow`` deflated for backends whose
flow compresses (the simulator's), stored for estimates, ``valid`` and ``meta`` always deflated):

* ``flow`` (T, 2, H, W) float16: forward flow t -> t+1 in pixels, channel 0 dx (right), channel 1 dy (down);
  finite everywhere, 0 where ``valid`` is false for the simulator backend;
* ``valid`` (T, H, W) bool: where the flow is defined (see :mod:`pipeline.flow.base`);
* ``meta`` () str: JSON, :func:`flow_meta`: ``format``, ``source`` (``backend``: the backend record
  with its weights' provenance, ``episode_sha256``: SHA-256 of the episode file's bytes,
  ``format_version``), ``episode`` (the episode file's name), ``pairs`` (T), ``height``,
  ``width`` and ``valid_fraction``.

``meta.source.episode_sha256`` ties the file to the exact episode it was computed from: the
flow stage recomputes a file whose hash names another episode, and a reader should refuse it.
"""

from __future__ import annotations

import json
import logging
import zipfile
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.common.io import dumps_json, write_npz_atomic

log = logging.getLogger(__name__)

FORMAT = (
    "flow (T, 2, H, W) float16: forward flow from frame t to t+1 in pixels, channel 0 = dx (right, +u), "
    "channel 1 = dy (down, +v); valid (T, H, W) bool: the pixel's content is inside frame t+1 "
    "(and, for the simulator backend, not background and not occluded there)"
)
#: Bumped when the meaning or computation of the output changes, so older outputs are recomputed.
FORMAT_VERSION = 1
#: Largest finite float16 magnitude: flow beyond it cannot be stored.
FLOAT16_MAX = float(np.finfo(np.float16).max)

_READ_ERRORS = (OSError, EOFError, KeyError, TypeError, ValueError, zipfile.BadZipFile, zlib.error)


def as_float16(flow: np.ndarray) -> np.ndarray:
    """``flow`` (float32, any shape) as float16, the stored precision: round to nearest even, inf beyond +-65504.

    The same bits as ``flow.astype(np.float16)``, about 8x faster through OpenCV's F16C conversion.
    """
    flow = np.ascontiguousarray(flow, dtype=np.float32)
    convert = getattr(cv2, "convertFp16", None)
    if convert is None or flow.ndim < 2 or flow.size == 0:
        with np.errstate(over="ignore"):
            return flow.astype(np.float16)
    return convert(flow.reshape(-1, flow.shape[-1])).view(np.float16).reshape(flow.shape)


def flow_source(backend: dict[str, Any], episode_sha256: str) -> dict[str, Any]:
    """``meta.source``: what a flow file was computed from (a rerun keeps a file only when this is equal)."""
    return {"backend": backend, "episode_sha256": episode_sha256, "format_version": FORMAT_VERSION}


def flow_meta(source: dict[str, Any], episode_name: str, flow16: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
    """The ``meta`` JSON of a flow file (see the module docstring)."""
    return {
        "format": FORMAT,
        "source": source,
        "episode": episode_name,
        "pairs": int(len(flow16)),
        "height": int(flow16.shape[2]),
        "width": int(flow16.shape[3]),
        "valid_fraction": round(float(valid.mean()), 6) if valid.size else None,
    }


def write_flow(
    path: str | Path, flow16: np.ndarray, valid: np.ndarray, meta: dict[str, Any], deflate_flow: bool = True
) -> None:
    """Write one flow file atomically (same arrays and meta, same bytes).

    Args:
        deflate_flow: deflate the ``flow`` member (``valid`` and ``meta`` always are). False stores it:
            an estimated flow keeps ~88% of its bytes under deflate, which costs more than DIS computes.
    """
    arrays = {"flow": flow16, "valid": valid, "meta": np.array(dumps_json(meta))}
    write_npz_atomic(path, arrays, compress=True if deflate_flow else ("valid", "meta"))


def read_flow_meta(path: str | Path) -> dict[str, Any] | None:
    """The ``meta`` of a flow file; None when it is missing or unreadable (logged)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return json.loads(npz["meta"].item())
    except _READ_ERRORS as exc:
        log.warning("%s: unreadable (%s: %s)", path, type(exc).__name__, exc)
        return None


def read_flow(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(flow, valid)`` of a flow file: (T, 2, H, W) float16 and (T, H, W) bool."""
    with np.load(path, allow_pickle=False) as npz:
        return npz["flow"], npz["valid"]

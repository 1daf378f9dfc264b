"""Bytes <-> arrays for every field of a sample (see :data:`pipeline.dataset.schema.FIELD_DOCS`).

The one place that knows how a field is stored: the writer encodes through
:func:`encode_sample`, every reader decodes through :func:`decode_sample` (or the per-field
decoders when it needs only some fields). Encoding is deterministic (PNG without timestamps,
``.npy`` through numpy's format writer, JSON with sorted keys), so the same arrays give the
same bytes.
"""
from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from PIL import Image

#: zlib level of the PNG frames (lossless at any level; 6 is PIL's default trade-off).
PNG_COMPRESS_LEVEL = 6


def png_bytes(frame: np.ndarray) -> bytes:
    """Lossless PNG of an (H, W, 3) uint8 RGB frame (no timestamp chunks: same pixels, same bytes)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame), mode="RGB").save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    """``.npy`` bytes of ``array`` (C order, no pickle)."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def json_bytes(obj: Any) -> bytes:
    """Compact JSON with sorted keys; NaN/inf are refused (they are not JSON)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def encode_sample(
    key: str,
    rgb: np.ndarray,
    flow: np.ndarray,
    flow_valid: np.ndarray,
    clip_image: np.ndarray,
    clip_text: np.ndarray,
    record: dict[str, Any],
) -> dict[str, Any]:
    """One sample as WebDataset writer input: ``__key__`` plus bytes per field of ``schema.FIELDS``.

    Args:
        key: the sample key (``schema.make_key``).
        rgb: (H, W, 3) uint8 frame t.
        flow: (2, H, W) float16 pixels, t -> t+1 (zeros at an episode's last frame).
        flow_valid: (H, W) bool.
        clip_image: (D,) float16; clip_text: (2, D) float16.
        record: the ``json`` member (``schema.JSON_DOCS``).
    """
    return {
        "__key__": key,
        "rgb.png": png_bytes(rgb),
        "flow.npy": npy_bytes(np.asarray(flow, np.float16)),
        "flowvalid.npy": npy_bytes(np.asarray(flow_valid, np.bool_)),
        "clipimage.npy": npy_bytes(np.asarray(clip_image, np.float16)),
        "cliptext.npy": npy_bytes(np.asarray(clip_text, np.float16)),
        "json": json_bytes(record),
    }


def decode_rgb(fields: dict[str, Any]) -> np.ndarray:
    """``rgb.png`` -> (H, W, 3) uint8."""
    with Image.open(io.BytesIO(fields["rgb.png"])) as image:
        return np.asarray(image.convert("RGB"))


def decode_npy(fields: dict[str, Any], field: str) -> np.ndarray:
    """One ``.npy`` field (no pickle)."""
    return np.load(io.BytesIO(fields[field]), allow_pickle=False)


def decode_flow(fields: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(flow (2, H, W) float16 pixels, valid (H, W) bool)."""
    return decode_npy(fields, "flow.npy"), decode_npy(fields, "flowvalid.npy")


def decode_json(fields: dict[str, Any]) -> Any:
    """The ``json`` member."""
    return json.loads(fields["json"])


def decode_sample(fields: dict[str, Any]) -> dict[str, Any]:
    """Decode one sample's members: ``rgb`` (H, W, 3) uint8, ``flow`` (2, H, W) float16, ``flowvalid`` (H, W) bool,
    ``clipimage`` (D,) float16, ``cliptext`` (2, D) float16, ``json`` dict.

    Raises:
        OSError, ValueError: a member does not decode (the callers name the shard and key).
    """
    flow, valid = decode_flow(fields)
    return {
        "rgb": decode_rgb(fields),
        "flow": flow,
        "flowvalid": valid,
        "clipimage": decode_npy(fields, "clipimage.npy"),
        "cliptext": decode_npy(fields, "cliptext.npy"),
        "json": decode_json(fields),
    }

"""Bytes <-> arrays for every field of a sample (see :data:`pipeline.dataset.schema.FIELD_DOCS`).

The one place that knows how a field is stored: the writer encodes through
:func:`encode_sample`, every reader decodes through :func:`decode_sample` (or the per-field
decoders when it needs only some fields). Encoding is deterministic (PNG without timestamps,
``.npy`` through numpy's format writer, JSON with sorted keys), so the same arrays give the
same bytes. Flow is a KITTI flow PNG (see ``schema.FIELD_DOCS["flow.png"]``): 1/64 px steps,
so the stored value is off by at most 1/128 px, and the validity mask is exact.
"""

from __future__ import annotations

import io
import json
from typing import Any

import cv2
import numpy as np
from PIL import Image

from pipeline.dataset.schema import CLIP_ROWS, FLOW_MAX, FLOW_MIN, FLOW_OFFSET, FLOW_SCALE, TEXT_ROWS

#: zlib level of the PNG frames (lossless at any level; 6 is PIL's default trade-off).
PNG_COMPRESS_LEVEL = 6


def png_bytes(frame: np.ndarray) -> bytes:
    """Lossless PNG of an (H, W, 3) uint8 RGB frame (no timestamp chunks: same pixels, same bytes)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame), mode="RGB").save(
        buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL
    )
    return buffer.getvalue()


#: zlib level and strategy of the flow PNGs (cv2). Run-length encoding (Z_RLE) suits flow: long runs of one
#: value (zero flow, rigid parts), little repetition at a distance. On the default data it is both smaller
#: than the default strategy at level 6 (459 vs 493 B per cartpole frame, 937 vs 1008 cheetah) and 1.6x faster.
FLOW_PNG_COMPRESSION = 6
FLOW_PNG_STRATEGY = cv2.IMWRITE_PNG_STRATEGY_RLE


def quantize_flow(flow: np.ndarray) -> np.ndarray:
    """Flow in pixels -> the KITTI PNG's uint16 values, ``round(flow * 64) + 2**15`` (any leading shape).

    Raises:
        ValueError: a value is not finite or outside [-512, 511.98] px (the message gives the extreme).
    """
    flow = np.asarray(flow, np.float64)
    if not np.isfinite(flow).all():
        raise ValueError("flow holds NaN or infinity")
    low, high = (float(flow.min()), float(flow.max())) if flow.size else (0.0, 0.0)
    if low < FLOW_MIN or high > FLOW_MAX:
        raise ValueError(
            f"flow spans {low:.2f}..{high:.2f} px, beyond the KITTI flow PNG's {FLOW_MIN:g}..{FLOW_MAX:g} px"
        )
    return (np.rint(flow * FLOW_SCALE) + FLOW_OFFSET).astype(np.uint16)


def dequantize_flow(values: np.ndarray) -> np.ndarray:
    """The inverse of :func:`quantize_flow`: uint16 values -> float32 pixels (multiples of 1/64, exact)."""
    return (values.astype(np.float32) - FLOW_OFFSET) / FLOW_SCALE


def flow_png_bytes(flow: np.ndarray, valid: np.ndarray) -> bytes:
    """KITTI flow PNG of one frame: (2, H, W) flow in pixels and (H, W) bool validity -> 16-bit RGB PNG
    (R = dx, G = dy as ``flow * 64 + 2**15``, B = valid). Deterministic (no timestamp chunks)."""
    values = quantize_flow(flow)
    bgr = np.stack(
        [np.asarray(valid, np.uint16), values[1], values[0]], axis=-1
    )  # cv2 writes BGR: file RGB = (dx, dy, valid)
    ok, buffer = cv2.imencode(
        ".png",
        np.ascontiguousarray(bgr),
        [cv2.IMWRITE_PNG_COMPRESSION, FLOW_PNG_COMPRESSION, cv2.IMWRITE_PNG_STRATEGY, FLOW_PNG_STRATEGY],
    )
    if not ok:
        raise ValueError("cv2 could not encode the flow PNG")
    return buffer.tobytes()


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
        flow: (2, H, W) pixels, t -> t+1 (zeros at an episode's last frame), stored to 1/64 px.
        flow_valid: (H, W) bool.
        clip_image: (D,); clip_text: (R, D), ``TEXT_ROWS``: stored together as ``clip.npy`` (1 + R, D) float16.
        record: the ``json`` member (``schema.JSON_DOCS``).

    Raises:
        ValueError: ``clip_text`` does not have one row per ``TEXT_ROWS`` entry (a reader would refuse the sample).
    """
    if np.ndim(clip_text) != 2 or len(clip_text) != len(TEXT_ROWS):
        raise ValueError(
            f"{key}: clip_text is {np.shape(clip_text)}, expected ({len(TEXT_ROWS)}, D): rows {', '.join(TEXT_ROWS)}"
        )
    return {
        "__key__": key,
        "rgb.png": png_bytes(rgb),
        "flow.png": flow_png_bytes(flow, flow_valid),
        "clip.npy": npy_bytes(
            np.concatenate([np.asarray(clip_image, np.float16)[None], np.asarray(clip_text, np.float16)])
        ),
        "json": json_bytes(record),
    }


#: Most pixels a sample's PNG may declare (4096 x 4096): checked in its header before it is decoded, so a
#: small file declaring a huge image cannot take gigabytes of memory.
MAX_PNG_PIXELS = 4096 * 4096
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes, field: str) -> tuple[int, int]:
    """(width, height) that PNG ``data`` declares in its IHDR header, checked against :data:`MAX_PNG_PIXELS`.

    Raises:
        ValueError: not a PNG, or one declaring more pixels than that.
    """
    if len(data) < 24 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError(f"{field} is not a PNG (no PNG signature and IHDR header)")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if width * height > MAX_PNG_PIXELS:
        raise ValueError(f"{field} declares a {width}x{height} image, over {MAX_PNG_PIXELS} pixels; refused undecoded")
    return width, height


def decode_rgb(fields: dict[str, Any]) -> np.ndarray:
    """``rgb.png`` -> (H, W, 3) uint8."""
    png_size(fields["rgb.png"], "rgb.png")
    with Image.open(io.BytesIO(fields["rgb.png"])) as image:
        return np.asarray(image.convert("RGB"))


def decode_npy(fields: dict[str, Any], field: str) -> np.ndarray:
    """One ``.npy`` field (no pickle)."""
    return np.load(io.BytesIO(fields[field]), allow_pickle=False)


def decode_flow_png(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """KITTI flow PNG bytes -> (flow (2, H, W) float32 pixels, valid (H, W) bool).

    Raises:
        ValueError: not a 16-bit 3-channel PNG, or one declaring more than :data:`MAX_PNG_PIXELS`.
    """
    png_size(data, "flow.png")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.dtype != np.uint16 or image.ndim != 3 or image.shape[2] != 3:
        got = "undecodable bytes" if image is None else f"{image.shape} {image.dtype}"
        raise ValueError(f"flow.png is {got}, expected a 16-bit 3-channel KITTI flow PNG")
    flow = dequantize_flow(np.stack([image[..., 2], image[..., 1]]))
    return flow, image[..., 0] > 0


def decode_flow(fields: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(flow (2, H, W) float32 pixels, valid (H, W) bool) of a sample."""
    return decode_flow_png(fields["flow.png"])


def decode_clip(fields: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(image embedding (D,) float16, text embeddings (R, D) float16 in ``TEXT_ROWS`` order) of a sample."""
    clip = decode_npy(fields, "clip.npy")
    if clip.ndim != 2 or clip.shape[0] != len(CLIP_ROWS):
        raise ValueError(f"clip.npy is {clip.shape}, expected ({len(CLIP_ROWS)}, D): rows {', '.join(CLIP_ROWS)}")
    return clip[0], clip[1:]


def decode_json(fields: dict[str, Any]) -> Any:
    """The ``json`` member."""
    return json.loads(fields["json"])


def decode_sample(fields: dict[str, Any]) -> dict[str, Any]:
    """Decode one sample's members: ``rgb`` (H, W, 3) uint8, ``flow`` (2, H, W) float32, ``flowvalid`` (H, W) bool,
    ``clipimage`` (D,) float16, ``cliptext`` (R, D) float16, ``json`` dict.

    Raises:
        OSError, ValueError: a member does not decode (the callers name the shard and key).
    """
    flow, valid = decode_flow(fields)
    clip_image, clip_text = decode_clip(fields)
    return {
        "rgb": decode_rgb(fields),
        "flow": flow,
        "flowvalid": valid,
        "clipimage": clip_image,
        "cliptext": clip_text,
        "json": decode_json(fields),
    }

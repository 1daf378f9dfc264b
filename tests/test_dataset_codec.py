"""The sample codec: flow survives the KITTI flow PNG round trip to 1/64 px (error <= 1/128 px) with an exact
validity mask, out-of-range or non-finite flow is refused, encoding is deterministic, and the PNG is the
standard KITTI layout (16-bit RGB: R = dx, G = dy as flow * 64 + 2**15, B = valid)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.dataset.codec import decode_flow_png, decode_sample, encode_sample, flow_png_bytes, quantize_flow
from pipeline.dataset.schema import FIELDS, FLOW_MAX, FLOW_MIN, TEXT_ROWS


def _flow(rng: np.random.Generator, h: int = 24, w: int = 40) -> tuple[np.ndarray, np.ndarray]:
    flow = rng.normal(0, 30, (2, h, w)).astype(np.float32)
    flow[0, 0, :3] = [FLOW_MIN, FLOW_MAX, 0.0]  # the extremes the format holds
    flow[1, 0, :4] = [1 / 128 - 1e-4, -1 / 128 + 1e-4, 0.3, -0.7]  # tiny flow rounds to the nearest 1/64
    valid = rng.random((h, w)) > 0.4
    return flow, valid


def test_flow_round_trips_to_a_64th_of_a_pixel_and_the_mask_exactly() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        flow, valid = _flow(rng)
        decoded, decoded_valid = decode_flow_png(flow_png_bytes(flow, valid))
        assert decoded.dtype == np.float32 and decoded.shape == flow.shape
        assert np.abs(decoded - flow).max() <= 1 / 128 + 1e-6
        np.testing.assert_array_equal(decoded * 64, np.round(decoded * 64))  # on the 1/64 px grid
        np.testing.assert_array_equal(decoded_valid, valid)
        assert decoded[0, 0, 0] == FLOW_MIN and decoded[0, 0, 1] == FLOW_MAX
    # float16 flow as the flow stage writes it, too
    flow[0, 0, 1] = 511.75  # float16 rounds 511.984 up to 512
    flow16 = flow.astype(np.float16)
    assert np.abs(decode_flow_png(flow_png_bytes(flow16, valid))[0] - flow16.astype(np.float32)).max() <= 1 / 128


def test_the_png_is_a_standard_kitti_flow_png() -> None:
    import cv2

    flow = np.zeros((2, 3, 4), np.float32)
    flow[0, 1, 2], flow[1, 1, 2] = 1.5, -2.25
    valid = np.zeros((3, 4), bool)
    valid[1, 2] = True
    data = flow_png_bytes(flow, valid)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert bgr.dtype == np.uint16 and bgr.shape == (3, 4, 3)
    r, g, b = bgr[1, 2, 2], bgr[1, 2, 1], bgr[1, 2, 0]
    assert (int(r), int(g), int(b)) == (32768 + 96, 32768 - 144, 1)
    assert (int(bgr[0, 0, 2]), int(bgr[0, 0, 0])) == (32768, 0)
    assert flow_png_bytes(flow, valid) == data  # deterministic: same flow, same bytes


@pytest.mark.parametrize("bad", [np.nan, np.inf, 600.0, -513.0])
def test_flow_the_format_cannot_hold_is_refused(bad: float) -> None:
    flow = np.zeros((2, 4, 4), np.float32)
    flow[1, 2, 3] = bad
    with pytest.raises(ValueError, match="(NaN or infinity|beyond the KITTI flow PNG)"):
        quantize_flow(flow)


def test_a_sample_round_trips_through_the_codec() -> None:
    rng = np.random.default_rng(1)
    flow, valid = _flow(rng, 8, 8)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    clip_image = rng.standard_normal(6).astype(np.float16)
    clip_text = rng.standard_normal((len(TEXT_ROWS), 6)).astype(np.float16)
    record = {"task": "t", "step": 0, "reward": 0.5}
    with pytest.raises(ValueError, match=r"clip_text is \(2, 6\), expected \(3, D\): rows caption, objects, motion"):
        encode_sample("t__ep000000__000000", rgb, flow, valid, clip_image, clip_text[:2], record)
    sample = encode_sample("t__ep000000__000000", rgb, flow, valid, clip_image, clip_text, record)
    assert set(sample) == {"__key__", *FIELDS}
    out = decode_sample(sample)
    np.testing.assert_array_equal(out["rgb"], rgb)
    np.testing.assert_array_equal(out["flowvalid"], valid)
    assert np.abs(out["flow"] - flow).max() <= 1 / 128
    np.testing.assert_array_equal(out["clipimage"], clip_image)
    np.testing.assert_array_equal(out["cliptext"], clip_text)
    assert out["json"] == record


@pytest.mark.parametrize("field", ["rgb.png", "flow.png"])
def test_a_png_declaring_a_huge_image_is_refused_before_it_is_decoded(field: str) -> None:
    """Reliability kind 5: a small PNG whose header declares 100000 x 100000 pixels (tens of GB decoded)."""
    import resource
    import time

    rng = np.random.default_rng(2)
    flow, valid = _flow(rng, 8, 8)
    sample = encode_sample(
        "t__ep000000__000000",
        rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
        flow,
        valid,
        np.zeros(6, np.float16),
        np.zeros((len(TEXT_ROWS), 6), np.float16),
        {"task": "t", "step": 0, "reward": 0.5},
    )
    data = bytearray(sample[field])
    data[16:24] = (100_000).to_bytes(4, "big") * 2  # IHDR width, height (the CRC no longer matches: never read)
    sample[field] = bytes(data)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"{field} declares a 100000x100000 image"):
        decode_sample(sample)
    assert time.perf_counter() - start < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing big was allocated
    sample[field] = b"not a png at all, but long enough to hold a header"
    with pytest.raises(ValueError, match=f"{field} is not a PNG"):
        decode_sample(sample)

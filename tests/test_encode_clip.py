"""CLIP backend: weights through the weights resolver (random, local file, local-dir, tags offline),
provenance, normalisation, and the batched preprocessing against open_clip's own transform."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from pipeline.common.weights import WeightsNotFoundError, sha256_of
from pipeline.config import EncodeParams, WeightsParams
from pipeline.encode.clip import ClipModelError, OpenClipEncoder, load_clip, register_project_configs

TINY = "semore-tiny-clip"


def _frames(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    frames[:, size // 4 : size // 2, :, 0] = 255  # some structure for the resampling to act on
    return frames


@pytest.fixture(scope="module")
def tiny() -> OpenClipEncoder:
    encoder = load_clip(EncodeParams(seed=5, batch_size=3), WeightsParams())
    assert isinstance(encoder, OpenClipEncoder)
    return encoder


def test_random_tiny_model_embeds_normalised_and_records_provenance(tiny: OpenClipEncoder) -> None:
    images = tiny.encode_images(_frames(7, 84))  # 3 batches of 3, 3, 1
    texts = tiny.encode_texts(["a cart and a pole", "the pole swings left", ""])
    assert images.shape == (7, 128) and images.dtype == np.float32 and texts.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(images[0], images[1]) and not np.allclose(texts[0], texts[1])
    # batching does not change the result beyond float rounding
    np.testing.assert_allclose(tiny.encode_images(_frames(7, 84)[2:3]), images[2:3], atol=1e-5)
    prov = tiny.provenance()
    json.dumps(prov)  # JSON-ready
    assert prov["random_init"] is True and prov["init_seed"] == 5 and prov["weights"]["sha256"] == "random init"
    assert prov["model"] == TINY and prov["model_config"]["embed_dim"] == 128 and prov["embed_dim"] == 128
    assert prov["preprocess"]["size"] == [84, 84] and prov["preprocess"]["interpolation"] == "bicubic"


def test_random_init_is_seeded(tiny: OpenClipEncoder) -> None:
    frames = _frames(2, 84)
    same = load_clip(EncodeParams(seed=5), WeightsParams())
    other = load_clip(EncodeParams(seed=6), WeightsParams())
    np.testing.assert_array_equal(same.encode_images(frames), tiny.encode_images(frames))
    assert not np.allclose(other.encode_images(frames), tiny.encode_images(frames), atol=1e-3)


@pytest.mark.parametrize("size", [32, 84, 120])
def test_batched_preprocessing_matches_open_clips_transform(tiny: OpenClipEncoder, size: int) -> None:
    from PIL import Image

    frames = _frames(4, size, seed=size)
    ours = tiny._preprocess(frames)
    theirs = torch.stack([tiny._pil_preprocess(Image.fromarray(f)) for f in frames])
    assert ours.shape == theirs.shape == (4, 3, 84, 84)
    difference = (ours - theirs).abs()
    assert float(difference.max()) < 0.05 and float(difference.mean()) < 1e-3  # at most ~2 levels of 255, rarely


def _save_tiny_checkpoint(encoder: OpenClipEncoder, path: Path) -> Path:
    torch.save(encoder.model.state_dict(), path)
    return path


def test_local_checkpoint_file_is_loaded_and_hashed(tiny: OpenClipEncoder, tmp_path: Path) -> None:
    path = _save_tiny_checkpoint(tiny, tmp_path / "tiny.pt")
    loaded = load_clip(EncodeParams(weights=str(path), seed=0), WeightsParams())  # seed 0 init is overwritten
    frames = _frames(3, 84)
    np.testing.assert_allclose(loaded.encode_images(frames), tiny.encode_images(frames), atol=1e-6)
    prov = loaded.provenance()
    assert prov["random_init"] is False and prov["init_seed"] is None
    assert prov["weights"]["sha256"] == sha256_of(path) and prov["weights"]["reason"] == "local path"


def test_local_dir_config_and_weights_win_over_clip_model(tiny: OpenClipEncoder, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    register_project_configs()
    folder = tmp_path / "my-clip"
    folder.mkdir()
    config = {
        "model_cfg": open_clip.get_model_config(TINY),
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file(
        {k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(folder / "open_clip_model.safetensors")
    )
    loaded = load_clip(EncodeParams(clip_model="ViT-B-32", weights=f"local-dir:{folder}"), WeightsParams())
    assert loaded.dim == 128  # the folder's architecture, not ViT-B-32's 512
    prov = loaded.provenance()
    assert prov["preprocess"]["mean"] == [0.5, 0.5, 0.5] and prov["preprocess"]["std"] == [0.25, 0.25, 0.25]
    assert prov["weights"]["sha256"] == sha256_of(folder) and prov["random_init"] is False
    texts = ["a pole on a cart"]
    np.testing.assert_allclose(loaded.encode_texts(texts), tiny.encode_texts(texts), atol=1e-6)  # same weights


def test_local_dir_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipModelError, match="no open_clip_config.json"):
        load_clip(EncodeParams(weights=f"local-dir:{tmp_path / 'empty'}"), WeightsParams())


def test_missing_tag_offline_follows_the_weights_policy(tmp_path: Path) -> None:
    params = EncodeParams(clip_model="ViT-B-32", weights="laion2b_s34b_b79k")
    with pytest.raises(WeightsNotFoundError, match=r"encode\.weights.*offline") as info:
        load_clip(params, WeightsParams(on_missing="error", offline=True, cache_dir=str(tmp_path)))
    assert str(tmp_path) in str(info.value)
    # on_missing: random -> random init, loud and recorded
    encoder = load_clip(
        EncodeParams(weights=str(tmp_path / "absent.pt")), WeightsParams(on_missing="random", cache_dir=str(tmp_path))
    )
    prov = encoder.provenance()
    assert prov["random_init"] is True and prov["weights"]["reason"].startswith("missing")


def test_unknown_model_and_bad_weights_file_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(ClipModelError, match=r"'ViT-B-32x' is not an open_clip model\. Close matches: ViT-B-32"):
        load_clip(EncodeParams(clip_model="ViT-B-32x"), WeightsParams())
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ClipModelError, match=r"could not build 'semore-tiny-clip' with weights .*garbage\.pt"):
        load_clip(EncodeParams(weights=str(garbage)), WeightsParams())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_requested_without_cuda() -> None:
    from pipeline.common.device import DeviceError

    with pytest.raises(DeviceError, match="encode.device"):
        load_clip(EncodeParams(device="cuda"), WeightsParams())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_matches_cpu(tiny: OpenClipEncoder, tmp_path: Path) -> None:
    path = _save_tiny_checkpoint(tiny, tmp_path / "tiny.pt")
    gpu = load_clip(EncodeParams(weights=str(path), device="cuda", fp16=True), WeightsParams())
    frames = _frames(5, 84)
    cos = (gpu.encode_images(frames) * tiny.encode_images(frames)).sum(axis=1)
    assert gpu.provenance()["precision"] == "fp16 autocast" and np.all(cos > 0.999)

"""The weights resolver: local file, cache, download hook, and offline-missing under both policies."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from pipeline.common.weights import WeightsNotFoundError, cache_name, resolve_weights, sha256_of


def _resolve(source: str, cache: Path, **kw):
    kw.setdefault("on_missing", "error")
    return resolve_weights(source, what="test model", param_key="flow.weights", cache_dir=cache, **kw)


def test_local_file_is_used_and_hashed(tmp_path: Path) -> None:
    weights = tmp_path / "w.ckpt"
    weights.write_bytes(b"abc")
    resolved = _resolve(str(weights), tmp_path / "cache")
    assert resolved.path == weights and not resolved.random_init
    assert resolved.sha256 == hashlib.sha256(b"abc").hexdigest()
    assert resolved.provenance()["sha256"] == resolved.sha256


def test_local_folder_hash_depends_on_names_and_contents(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, name in ((a, "x.bin"), (b, "y.bin")):
        folder.mkdir()
        (folder / name).write_bytes(b"same")
    assert sha256_of(a) != sha256_of(b)
    assert _resolve(str(a), tmp_path / "cache").path == a


def test_name_found_in_cache_and_in_backend_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / cache_name("hf://org/model")).mkdir()
    assert _resolve("hf://org/model", cache, offline=True).path == cache / "hf--org--model"

    backend = tmp_path / "torchhub"
    backend.mkdir()
    (backend / "raft_small-things.ckpt").write_bytes(b"x")
    resolved = _resolve(
        "things", cache, offline=True, extra_cache_dirs=[backend], extra_names=["raft_small-things.ckpt"]
    )
    assert resolved.path == backend / "raft_small-things.ckpt"


def test_offline_missing_error_policy_says_what_to_put_where(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(WeightsNotFoundError) as info:
        _resolve("hf://org/model", cache, offline=True)
    message = str(info.value)
    assert "test model" in message and "flow.weights" in message
    assert str(cache / "hf--org--model") in message
    assert "offline" in message


def test_offline_missing_random_policy_logs_loudly_and_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []
    with caplog.at_level(logging.WARNING):
        resolved = _resolve(
            "things", tmp_path / "c", on_missing="random", offline=True, downloader=lambda s, d: calls.append(s)
        )
    assert resolved.random_init and resolved.path is None
    assert calls == []  # offline: the downloader is never called
    assert "RANDOM INITIALISATION" in caplog.text
    prov = resolved.provenance()
    assert prov["random_init"] is True and prov["sha256"] == "random init" and "offline" in prov["reason"]


def test_env_offline_flag_blocks_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMORE_OFFLINE", "1")
    calls: list[str] = []
    resolved = _resolve("things", tmp_path / "c", on_missing="random", downloader=lambda s, d: calls.append(s))
    assert resolved.random_init and calls == []


def test_online_downloader_result_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("SEMORE_OFFLINE", raising=False)

    def fetch(source: str, cache: Path) -> Path:
        path = cache / f"{source}.ckpt"
        path.write_bytes(b"downloaded")
        return path

    resolved = _resolve("things", tmp_path / "c", downloader=fetch)
    assert resolved.reason == "downloaded" and resolved.path.read_bytes() == b"downloaded"


def test_failed_download_falls_back_to_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("SEMORE_OFFLINE", raising=False)

    def fetch(source: str, cache: Path) -> Path:
        raise ConnectionError("no route to host")

    with pytest.raises(WeightsNotFoundError, match="download failed: ConnectionError"):
        _resolve("things", tmp_path / "c", downloader=fetch)
    assert _resolve("things", tmp_path / "c", downloader=fetch, on_missing="random").random_init


def test_explicit_random_needs_no_lookup(tmp_path: Path) -> None:
    resolved = _resolve("random", tmp_path / "nowhere")
    assert resolved.random_init and resolved.reason == "requested by params"

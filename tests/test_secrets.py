"""Reliability kind 2: a secret from the environment never reaches an output.

A real chat-completions server on 127.0.0.1 echoes the API key it was sent (in a valid answer's caption,
an HTTP error body and a malformed response); annotate, flow and encode run through the CLI; no file they
write holds the key, and push refuses a dataset that does, naming the file. The key is made by the test.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from support.annotate import VALID_ANSWER, Action, ChatServer, collect_episodes

from pipeline.cli import main
from pipeline.common.secrets import MIN_SECRET_CHARS, Redactor, SecretInOutput
from pipeline.dataset.hub import push_dataset

KEY_ENV = "SEMORE_TEST_SECRET_KEY"
KEY = "sk-test-" + "5f3c9a1e7b2d4086"  # made here: no secret of this machine is used


def echo_plan() -> Any:
    """A server that echoes the key: the first tries of the frames take turns at an HTTP 503 whose body
    quotes it and a malformed reply holding it; every retry answers validly, quoting it in the caption."""
    first_tries = itertools.count()
    answer = json.loads(VALID_ANSWER)
    answer["caption"] = f"A cart. Your header was: Bearer {KEY}"

    def plan(frame: np.ndarray, seen: int, body: dict[str, Any]) -> Action:
        if seen == 0 and next(first_tries) % 2 == 0:
            return Action("status", code=503, body=json.dumps({"error": {"message": f"bad key {KEY}"}}))
        if seen == 0:
            return Action("malformed", body=f"<html>Authorization: Bearer {KEY}</html>")
        return Action("answer", content=json.dumps(answer))

    return plan


def files_holding(root: Path, needle: str) -> list[str]:
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()
    )


def test_an_echoed_key_reaches_no_output_and_push_refuses_a_dataset_holding_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    data = tmp_path / "data"
    episodes = collect_episodes(data / "episodes" / "cartpole-swingup", episodes=1, steps=10)
    with ChatServer(plan=echo_plan()) as server:
        settings = {
            "backend": "openai",
            "model": server.model,
            "base_url": server.base_url,
            "api_key_env": KEY_ENV,
            "every_k": 2,
            "max_retries": 1,
            "retry_backoff_s": 0.0,
            "cache_dir": str(tmp_path / "annotate-cache"),
        }
        params = tmp_path / "params.yaml"
        params.write_text(
            yaml.safe_dump({"annotate": settings, "flow": {"backend": "dis"}, "encode": {"val_fraction": 0.0}})
        )
        annotations = data / "annotations" / "cartpole-swingup"
        cli = ["--params", str(params)]
        argv = ["annotate", "--episodes", str(episodes), "--out", str(annotations), "--metrics", str(data / "a.json")]
        assert main([*cli, *argv]) == 0
    assert set(server.auth_headers) == {f"Bearer {KEY}"}  # the key was sent, and echoed back
    records = [r for f in annotations.glob("*.json") for r in json.loads(f.read_text())["records"]]
    assert len(records) == 6 and all(r["status"] == "ok" for r in records)
    assert all(f"[redacted ${KEY_ENV}]" in r["annotation"]["caption"] for r in records)

    flow = ["flow", "--episodes", str(episodes), "--out", str(data / "flow" / "cartpole-swingup")]
    assert main([*cli, *flow, "--metrics", str(data / "f.json")]) == 0
    dataset = data / "dataset"
    inputs = [
        "--episodes",
        str(data / "episodes"),
        "--flow",
        str(data / "flow"),
        "--annotations",
        str(data / "annotations"),
    ]
    assert main([*cli, "encode", *inputs, "--out", str(dataset)]) == 0
    assert files_holding(tmp_path, KEY) == []  # annotations, the annotate cache, metrics, the dataset

    # a dataset made before the fix (here: the key pasted into its card) is refused before any upload
    leaked = tmp_path / "leaked"
    shutil.copytree(dataset, leaked)
    (leaked / "README.md").write_text((leaked / "README.md").read_text() + f"\nkey: {KEY}\n")
    monkeypatch.setenv("HF_TOKEN", "hf_" + "test_token_not_real")
    capsys.readouterr()
    assert main([*cli, "push", "--dataset", str(leaked), "--repo-id", "bob/data"]) == 2
    err = capsys.readouterr().err
    assert f"{leaked / 'README.md'}: holds the value of ${KEY_ENV}" in err and KEY not in err
    with pytest.raises(SecretInOutput, match=r"HF_TOKEN"):  # the Hub token itself is checked too
        hub_token = tmp_path / "hub-token"
        shutil.copytree(dataset, hub_token)
        (hub_token / "README.md").write_text("hf_test_token_not_real")
        push_dataset(hub_token, "bob/data", api=object())


def test_the_redactor_finds_a_secret_split_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.common.secrets as secrets

    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("SEMORE_TEST_SHORT", "x" * (MIN_SECRET_CHARS - 1))
    monkeypatch.setattr(secrets, "_CHUNK", 16)
    redactor = Redactor([KEY_ENV, "SEMORE_TEST_SHORT", "SEMORE_TEST_UNSET"])
    assert list(redactor.secrets.values()) == [KEY_ENV]  # short and unset values are no secrets
    path = tmp_path / "blob"
    for offset in range(20):  # the key straddles every chunk boundary in turn
        path.write_bytes(b"." * offset + KEY.encode() + b"." * 7)
        assert redactor.find_in_file(path) == KEY_ENV
    path.write_bytes(b"." * 40)
    assert redactor.find_in_file(path) is None
    assert redactor(f"a {KEY} b {KEY}") == f"a [redacted ${KEY_ENV}] b [redacted ${KEY_ENV}]"


def test_params_refuse_credentials_in_the_server_url() -> None:
    from pipeline.config import ParamsError, parse_params

    with pytest.raises(ParamsError, match="secrets come from the environment only"):
        parse_params({"annotate": {"base_url": "http://user:hunter2hunter2@127.0.0.1:8000/v1"}})

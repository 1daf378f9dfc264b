"""The dataset package: one owner of the format. Opened once and validated from stats.json (the shard list,
sizes and hashes), the card's reader snippet runs as written, the Hub helpers refuse bad repo ids and
unreachable hubs with clear errors, and pretrain reads through it (stats.json, batch-size warning)."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import yaml
from support.datasets import write_synthetic_dataset

from pipeline.cli import main
from pipeline.dataset import DatasetError, open_dataset
from pipeline.dataset.hub import HubError, check_repo_id, pull_dataset, push_dataset
from pipeline.dataset.schema import SCHEMA_VERSION

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("dataset") / "dataset",
        tasks=("squares-a",),
        episodes=3,
        steps=5,
        size=16,
        clip_dim=4,
        annotate_every=2,
        val_fraction=0.34,
        shard_maxcount=5,
    )


@pytest.fixture()
def copy(dataset: Path, tmp_path: Path) -> Path:
    target = tmp_path / "dataset"
    shutil.copytree(dataset, target)
    return target


def test_open_takes_the_shard_list_from_stats_json(copy: Path) -> None:
    ds = open_dataset(copy)
    stats = json.loads((copy / "stats.json").read_text())
    for split in ("train", "validation"):
        assert [p.name for p in ds.shards[split]] == [s["name"] for s in stats["splits"][split]["shards"]]
        assert ds.samples[split] == stats["splits"][split]["samples"]
    assert (ds.height, ds.width, ds.embed_dim) == (16, 16, 4)
    # a shard that stats.json does not list is refused, not silently read
    shutil.copy(ds.shards["train"][0], copy / "train" / "shard-000077.tar")
    with pytest.raises(DatasetError, match=r"shard-000077\.tar are not listed in stats\.json"):
        open_dataset(copy)


def test_open_checks_sizes_and_hashes(copy: Path) -> None:
    shard = copy / "train" / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # inside the first member's payload: same size, other bytes
    shard.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"shard-000000\.tar: SHA-256 differs from stats\.json.*rebuild the dataset"):
        open_dataset(copy)
    shard.write_bytes(bytes(data[:2048]))
    with pytest.raises(
        DatasetError, match=r"shard-000000\.tar: 2048 bytes, stats\.json lists \d+; the shard is truncated"
    ):
        open_dataset(copy)
    stats = json.loads((copy / "stats.json").read_text())
    stats["schema_version"] = 99
    (copy / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(DatasetError, match=rf"stats\.json: schema_version 99, this code reads {SCHEMA_VERSION}"):
        open_dataset(copy)


def test_the_cards_reader_snippet_runs_as_written(dataset: Path) -> None:
    import torch

    card = (dataset / "README.md").read_text()
    block = re.search(r"### From your own training code.*?```python\n(.*?)```", card, re.S)
    assert block is not None
    code = block.group(1).replace('"path/to/this/folder"', repr(str(dataset))).replace("repeat=True", "repeat=False")
    assert len(code.strip().splitlines()) == 3
    scope: dict = {"torch": torch}
    exec(code, scope)  # noqa: S102 - the documented snippet itself
    batch = next(iter(scope["loader"]))
    assert (
        batch["obs"].shape == (min(64, scope["ds"].samples["train"]), 9, 16, 16) and batch["obs"].dtype == torch.uint8
    )
    assert set(batch) >= {
        "flow",
        "flow_valid",
        "clip_image",
        "clip_text",
        "text_valid",
        "reward",
        "reward_valid",
        "key",
    }


@pytest.mark.parametrize("repo_id", ["a/..", "../x", "a/.hidden", "a/b--c", "a/b/c", "no-slash"])
def test_bad_repo_ids_are_refused_before_any_download(repo_id: str, tmp_path: Path) -> None:
    with pytest.raises(HubError, match="--repo-id"):
        check_repo_id(repo_id)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({}))
    assert main(["--params", str(params), "pull", "--repo-id", repo_id, "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_an_unreachable_hub_is_a_hub_error_whatever_the_http_client(dataset: Path, tmp_path: Path) -> None:
    from huggingface_hub.errors import HTTPError  # the client's base error type (httpx or httpx2)

    request_error = _request_error_type()

    class Unreachable:
        def create_repo(self, *args, **kwargs):
            raise request_error("[Errno -3] Temporary failure in name resolution")

        def snapshot_download(self, **kwargs):
            raise request_error("[Errno -3] Temporary failure in name resolution")

    assert issubclass(request_error, HTTPError) and not issubclass(request_error, OSError)
    with pytest.raises(
        HubError,
        match=r"push to alice/x failed \(.*Error: \[Errno -3\].*check the repo id, your token's access and the network",
    ):
        push_dataset(dataset, "alice/x", api=Unreachable())
    with pytest.raises(HubError, match=r"pull of alice/x failed"):
        pull_dataset("alice/x", tmp_path / "out", api=Unreachable())


def _request_error_type() -> type[Exception]:
    """The connect error of the HTTP client huggingface_hub is built on (what an unreachable Hub raises)."""
    import importlib

    from huggingface_hub.errors import HTTPError

    client = importlib.import_module(HTTPError.__module__.split(".")[0])
    return client.ConnectError


def test_pretrain_warns_when_the_batch_is_larger_than_the_dataset(
    dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline.config import PretrainParams
    from pipeline.pretrain.run import pretrain  # the function run() wraps

    train = open_dataset(dataset).samples["train"]
    params = PretrainParams(
        channels=4,
        depth=2,
        feature_dim=8,
        head_hidden=8,
        batch_size=train + 4,
        steps=1,
        workers=0,
        shuffle_buffer=0,
        device="cpu",
        probe_max_per_task=20,
    )
    with caplog.at_level(logging.WARNING, logger="pipeline.pretrain"):
        metrics = pretrain(dataset, tmp_path / "out", tmp_path / "m.json", tmp_path / "plots", params)
    assert f"pretrain.batch_size = {train + 4} is larger than the dataset's {train} train samples" in caplog.text
    # a made-up task has no model to read its recorded state by: the probe leaves it out, and says so
    assert "probe: task 'squares-a' is skipped" in caplog.text and metrics["probe_r2_per_task"]["pretrained"] == {}
    from pipeline.pretrain.run import PretrainSummary

    assert "probe R^2 pretrained n/a vs random n/a" in PretrainSummary(stage="pretrain", out="o", values=metrics).line()


def test_pretrain_refuses_a_modified_shard_through_the_cli(
    copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shard = copy / "validation" / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"pretrain": {"steps": 1, "device": "cpu", "workers": 0}}))
    rc = main(
        [
            "--params",
            str(params),
            "pretrain",
            "--dataset",
            str(copy),
            "--out",
            str(tmp_path / "p"),
            "--metrics",
            str(tmp_path / "m.json"),
            "--plots",
            str(tmp_path / "plots"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and f"{shard}: SHA-256 differs from stats.json" in err and "Traceback" not in err


def test_pretrain_refuses_a_dataset_without_valid_annotations_while_text_losses_are_on(
    copy: Path, tmp_path: Path
) -> None:
    """A dataset from elsewhere (encode itself refuses to write one) whose train split has no valid annotation."""
    from pipeline.common.errors import UserError
    from pipeline.config import PretrainParams
    from pipeline.pretrain.run import pretrain  # the function run() wraps

    stats_path = copy / "stats.json"
    stats = json.loads(stats_path.read_text())
    stats["stats"]["train"]["annotated_frames"] = 0
    stats_path.write_text(json.dumps(stats))
    params = PretrainParams(
        channels=4,
        depth=2,
        feature_dim=8,
        head_hidden=8,
        batch_size=4,
        steps=1,
        workers=0,
        shuffle_buffer=0,
        device="cpu",
    )
    with pytest.raises(UserError, match="no frame with a valid annotation.*squares-a.*weight_clip_text: 0"):
        pretrain(copy, tmp_path / "out", tmp_path / "m.json", tmp_path / "plots", params)
    assert not (tmp_path / "out").exists()

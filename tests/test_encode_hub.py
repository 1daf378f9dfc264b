"""Publishing: push and pull tested at the huggingface_hub boundary (the Hub cannot be reached from
here): what would be uploaded, where, as which repo type; and the CLI of encode / push / pull."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.datasets import write_synthetic_inputs

from pipeline.cli import main
from pipeline.common.io import OUTPUT_MARKER
from pipeline.config import EncodeParams, WeightsParams
from pipeline.dataset import DatasetError, validate_dataset
from pipeline.dataset.hub import HubError, pull_dataset, push_dataset, resolve_dataset
from pipeline.encode.run import run as encode

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TASK = "cheetah-run"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("encode_hub")
    out = root / "dataset"
    encode(
        *write_synthetic_inputs(root, (TASK,), episodes=2, length=3, size=8, every_k=2),
        out,
        EncodeParams(shard_maxcount=3),
        WeightsParams(),
    )
    return out


class FakeHub:
    """Records calls the way HfApi receives them; serves `remote` as the repo's content."""

    def __init__(self, remote: Path | None = None, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, tuple, dict[str, Any]]] = []
        self.remote = remote
        self.error = error

    def create_repo(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append(("create_repo", args, kwargs))
        if self.error:
            raise self.error
        return f"https://huggingface.co/datasets/{args[0]}"

    def upload_folder(self, **kwargs: Any) -> Any:
        self.calls.append(("upload_folder", (), kwargs))
        return type(
            "CommitInfo", (), {"commit_url": f"https://huggingface.co/datasets/{kwargs['repo_id']}/commit/abc"}
        )()

    def snapshot_download(self, **kwargs: Any) -> str:
        self.calls.append(("snapshot_download", (), kwargs))
        if self.error:
            raise self.error
        assert self.remote is not None
        local = Path(kwargs["local_dir"])
        shutil.copytree(self.remote, local, dirs_exist_ok=True)
        (local / ".cache" / "huggingface").mkdir(parents=True, exist_ok=True)  # what huggingface_hub leaves there
        return str(local)


def _uploaded_files(folder: Path, kwargs: dict[str, Any]) -> set[str]:
    """The files huggingface_hub would upload for these upload_folder arguments (its own pattern filter)."""
    from huggingface_hub.utils import filter_repo_objects

    files = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
    return set(
        filter_repo_objects(
            files, allow_patterns=kwargs["allow_patterns"], ignore_patterns=kwargs.get("ignore_patterns")
        )
    )


def test_push_uploads_the_whole_dataset_as_a_dataset_repo(dataset: Path) -> None:
    hub = FakeHub()
    url = push_dataset(dataset, "alice/semore-cheetah", private=True, api=hub)
    assert url.endswith("/commit/abc")
    (name, args, kwargs), (name2, _, upload) = hub.calls
    assert name == "create_repo" and args == ("alice/semore-cheetah",)
    assert kwargs == {"repo_type": "dataset", "private": True, "exist_ok": True}
    assert name2 == "upload_folder" and upload["repo_id"] == "alice/semore-cheetah" and upload["repo_type"] == "dataset"
    assert Path(upload["folder_path"]) == dataset
    every_file = {str(p.relative_to(dataset)) for p in dataset.rglob("*") if p.is_file()} - {OUTPUT_MARKER}
    assert (dataset / OUTPUT_MARKER).is_file()  # local bookkeeping of which stage wrote the folder: not published
    assert _uploaded_files(dataset, upload) == every_file
    assert {"README.md", "stats.json", "train/shard-000000.tar", "validation/shard-000000.tar"} <= every_file
    assert "samples" in upload["commit_message"]
    # stale shards of an earlier, bigger push are removed in the same commit; card and stats are not
    from huggingface_hub.utils import filter_repo_objects

    remote = ["README.md", "stats.json", "train/shard-000000.tar", "train/shard-000099.tar", ".gitattributes"]
    assert set(filter_repo_objects(remote, allow_patterns=upload["delete_patterns"])) == {
        "train/shard-000000.tar",
        "train/shard-000099.tar",
    }


def test_push_refuses_a_broken_folder_before_uploading(dataset: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    (broken / "train" / "shard-000000.tar").unlink()
    hub = FakeHub()
    with pytest.raises(DatasetError, match=r"shard-000000\.tar: shard missing"):
        push_dataset(broken, "alice/x", api=hub)
    assert hub.calls == []
    with pytest.raises(HubError, match="expected <user or org>/<dataset name>"):
        push_dataset(dataset, "not a repo id", api=hub)


def test_hub_failures_become_user_errors(dataset: Path, tmp_path: Path) -> None:
    from huggingface_hub.errors import OfflineModeIsEnabled

    with pytest.raises(HubError, match="offline mode is on"):
        push_dataset(dataset, "alice/x", api=FakeHub(error=OfflineModeIsEnabled("offline")))
    with pytest.raises(HubError, match=r"pull of alice/x failed \(ConnectionError"):
        pull_dataset("alice/x", tmp_path / "out", api=FakeHub(error=ConnectionError("no route")))
    assert not (tmp_path / "out").exists()


def test_pull_validates_then_renames_into_place(dataset: Path, tmp_path: Path) -> None:
    hub = FakeHub(remote=dataset)
    out = tmp_path / "data" / "dataset"
    check = pull_dataset("hf://datasets/alice/semore-cheetah", out, revision="v1", api=hub)
    ((_, _, kwargs),) = hub.calls
    assert (
        kwargs["repo_id"] == "alice/semore-cheetah" and kwargs["repo_type"] == "dataset" and kwargs["revision"] == "v1"
    )
    assert check.folder == out and check.samples == validate_dataset(dataset).samples
    assert not (out / ".cache").exists() and sorted(p.name for p in out.parent.iterdir()) == ["dataset"]
    assert (out / "README.md").read_bytes() == (dataset / "README.md").read_bytes()


def test_pull_of_a_corrupt_repo_leaves_no_dataset(dataset: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    shutil.copytree(dataset, remote)
    shard = remote / "validation" / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:1000])
    out = tmp_path / "dataset"
    with pytest.raises(DatasetError, match="truncated"):
        pull_dataset("alice/x", out, api=FakeHub(remote=remote))
    assert not out.exists()
    assert (tmp_path / ".dataset.pull").is_dir()  # kept: the next pull resumes from it


def test_resolve_dataset(dataset: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_dataset(dataset) == dataset
    with pytest.raises(HubError, match=r"no such folder \(run the encode stage first.*and not a Hub dataset id"):
        resolve_dataset(str(tmp_path / "nope" / "deeper" / "x y"))
    with pytest.raises(HubError, match="download of alice/not-cached failed"):  # offline and not cached
        resolve_dataset("alice/not-cached", cache_dir=tmp_path / "hub")


# ---- the CLI ----------------------------------------------------------------------------------


def _params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"encode": {"shard_maxcount": 2, "val_fraction": 0.5}}))
    return path


def test_cli_encode_push_pull(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from huggingface_hub import HfApi

    episodes, flow, notes = write_synthetic_inputs(tmp_path / "in", (TASK,), episodes=2, length=2, size=8, every_k=2)
    out = tmp_path / "data" / "dataset"
    params = _params_file(tmp_path)
    argv = [
        "--params",
        str(params),
        "encode",
        "--episodes",
        str(episodes),
        "--flow",
        str(flow),
        "--annotations",
        str(notes),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert "train: 3 samples / 2 shards" in capsys.readouterr().out
    assert validate_dataset(out).samples == {"train": 3, "validation": 3}

    # push through the real HfApi class with its network methods replaced
    seen: dict[str, Any] = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: seen.update(create=(repo_id, kw, self.token)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: seen.update(upload=kw))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    assert (
        main(["--params", str(params), "push", "--dataset", str(out), "--repo-id", "bob/data", "--message", "v1"]) == 0
    )
    assert seen["create"] == ("bob/data", {"repo_type": "dataset", "private": False, "exist_ok": True}, "hf_test_token")
    assert seen["upload"]["repo_type"] == "dataset" and seen["upload"]["commit_message"] == "v1"

    monkeypatch.setattr(HfApi, "snapshot_download", lambda self, **kw: FakeHub(remote=out).snapshot_download(**kw))
    pulled = tmp_path / "pulled"
    assert main(["--params", str(params), "pull", "--repo-id", "bob/data", "--out", str(pulled)]) == 0
    assert validate_dataset(pulled).samples == {"train": 3, "validation": 3}


def test_cli_errors_exit_2_without_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    params = _params_file(tmp_path)
    assert (
        main(["--params", str(params), "encode", "--episodes", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
        == 2
    )
    err = capsys.readouterr().err
    assert "run the collect stage first" in err and "Traceback" not in err
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    episodes, flow, notes = write_synthetic_inputs(tmp_path / "in", (TASK,), episodes=1, length=2, size=8)
    encode(episodes, flow, notes, tmp_path / "ds", EncodeParams(val_fraction=0.0), WeightsParams())
    assert main(["--params", str(params), "push", "--dataset", str(tmp_path / "ds"), "--repo-id", "bob/data"]) == 2
    err = capsys.readouterr().err
    assert "set HF_TOKEN" in err and "Traceback" not in err

"""Encode stage, bad input: missing or malformed inputs name the file and the fix; a shard folder with
a missing or corrupt tar, or a sample missing a field, fails naming the shard and the key."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from support.datasets import restamp, write_synthetic_inputs

from pipeline.common.io import write_npz_atomic
from pipeline.config import EncodeParams, WeightsParams
from pipeline.dataset import DatasetError, validate_dataset
from pipeline.dataset.schema import CLIP_ROWS
from pipeline.encode.inputs import EncodeInputError
from pipeline.encode.run import run as encode

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TASK = "cartpole-swingup"
PARAMS = EncodeParams(shard_maxcount=4)


def _inputs(root: Path) -> tuple[Path, Path, Path]:
    return write_synthetic_inputs(root, (TASK,), episodes=2, length=4, size=8, every_k=2)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("encode_errors")
    out = root / "dataset"
    encode(*_inputs(root), out, PARAMS, WeightsParams())
    return out


@pytest.fixture()
def copy(built: Path, tmp_path: Path) -> Path:
    target = tmp_path / "dataset"
    shutil.copytree(built, target)
    return target


@pytest.fixture()
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """These errors must come before any work: the CLIP model is never built."""

    def refuse(*args, **kwargs):
        raise AssertionError("the CLIP model was loaded before the inputs were checked")

    monkeypatch.setattr("pipeline.encode.run.load_clip", refuse)


@pytest.mark.usefixtures("no_model")
def test_missing_flow_and_annotation_files_are_named_with_the_fix(tmp_path: Path) -> None:
    episodes, flow, notes = _inputs(tmp_path)
    (flow / TASK / "episode_000001.npz").unlink()
    shutil.rmtree(notes / TASK)
    out = tmp_path / "dataset"
    with pytest.raises(EncodeInputError) as info:
        encode(episodes, flow, notes, out, PARAMS, WeightsParams())
    message = str(info.value)
    assert str(flow / TASK / "episode_000001.npz") in message and "semore flow" in message
    assert str(notes / TASK / "episode_000000.json") in message and "semore annotate" in message
    assert not out.exists()


@pytest.mark.usefixtures("no_model")
def test_no_episodes(tmp_path: Path) -> None:
    (tmp_path / "episodes" / TASK).mkdir(parents=True)
    with pytest.raises(EncodeInputError, match="semore collect"):
        encode(tmp_path / "episodes", tmp_path / "flow", tmp_path / "notes", tmp_path / "out", PARAMS, WeightsParams())
    with pytest.raises(EncodeInputError, match="no such folder"):
        encode(tmp_path / "nope", tmp_path / "flow", tmp_path / "notes", tmp_path / "out", PARAMS, WeightsParams())


@pytest.mark.usefixtures("no_model")
def test_flow_of_the_wrong_shape(tmp_path: Path) -> None:
    episodes, flow, notes = _inputs(tmp_path)
    bad = flow / TASK / "episode_000001.npz"
    meta = np.load(bad)["meta"]  # the right provenance, the wrong shape
    write_npz_atomic(bad, {"flow": np.zeros((4, 2, 8, 9), np.float16), "valid": np.ones((4, 8, 9), bool), "meta": meta})
    with pytest.raises(
        EncodeInputError, match=r"episode_000001\.npz: flow has shape \(4, 2, 8, 9\).*rerun the flow stage"
    ):
        encode(episodes, flow, notes, tmp_path / "out", PARAMS, WeightsParams())


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["records"][1].update(status="maybe"), r"records\.1\.status: Input should be 'ok' or 'failed'"),
        (lambda d: d["records"][0].update(step=99), r"record steps \[99, 2, 4\] are not sorted"),
        (
            lambda d: d["records"][0]["annotation"]["objects"][0].update(box=[1, 2]),
            r"records\.0\.annotation\.objects\.0\.box: .*box must have 4 numbers",
        ),
        (lambda d: d["records"][0].update(annotation=None), r"records\.0: .*status 'ok' needs an annotation"),
        (
            lambda d: d["records"][0]["annotation"]["objects"][0].update(box=[1, 2, 30, 4]),
            r"records\.0\.annotation\.objects\.0\.box",
        ),
    ],
)
@pytest.mark.usefixtures("no_model")
def test_malformed_annotations_name_file_and_record(tmp_path: Path, mutate, expected: str) -> None:
    episodes, flow, notes = _inputs(tmp_path)
    path = notes / TASK / "episode_000000.json"
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(EncodeInputError, match=expected) as info:
        encode(episodes, flow, notes, tmp_path / "out", PARAMS, WeightsParams())
    assert str(path) in str(info.value) and "rerun the annotate stage" in str(info.value)


@pytest.mark.usefixtures("no_model")
def test_unreadable_annotation_file(tmp_path: Path) -> None:
    episodes, flow, notes = _inputs(tmp_path)
    (notes / TASK / "episode_000001.json").write_text("{not json")
    with pytest.raises(EncodeInputError, match=r"episode_000001\.json: not JSON"):
        encode(episodes, flow, notes, tmp_path / "out", PARAMS, WeightsParams())


def test_non_finite_state_is_named(tmp_path: Path) -> None:
    from pipeline.sim.episodes import load_episode, save_episode

    episodes, flow, notes = _inputs(tmp_path)
    path = episodes / TASK / "episode_000001.npz"
    ep = load_episode(path)
    ep.qvel[3, 0] = np.nan
    save_episode(path, ep)
    restamp((episodes, flow, notes), TASK, 1)  # as if flow and annotate had been rerun on it
    with pytest.raises(EncodeInputError, match=r"episode_000001\.npz: qvel is not finite at step 3"):
        encode(episodes, flow, notes, tmp_path / "out", PARAMS, WeightsParams())


def test_a_failed_rebuild_keeps_the_previous_dataset(tmp_path: Path) -> None:
    episodes, flow, notes = _inputs(tmp_path)
    out = tmp_path / "dataset"
    encode(episodes, flow, notes, out, PARAMS, WeightsParams())
    before = validate_dataset(out).samples
    (notes / TASK / "episode_000001.json").write_text("[]")
    with pytest.raises(EncodeInputError):
        encode(episodes, flow, notes, out, PARAMS, WeightsParams())
    assert validate_dataset(out).samples == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "annotations",
        "dataset",
        "episodes",
        "flow",
    ]  # no temp leftovers


# ---- reading a shard folder -------------------------------------------------------------------


def _members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def _rewrite(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_valid_folder_passes(copy: Path) -> None:
    check = validate_dataset(copy)
    assert check.samples == {"train": 5, "validation": 5} and check.embed_dim == 128


def test_missing_shard(copy: Path) -> None:
    (copy / "train" / "shard-000001.tar").unlink()
    with pytest.raises(DatasetError, match=r"train/shard-000001\.tar: shard missing"):
        validate_dataset(copy)


def test_truncated_shard(copy: Path) -> None:
    shard = copy / "validation" / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    with pytest.raises(
        DatasetError, match=r"validation/shard-000000\.tar: 3000 bytes, stats\.json lists \d+; the shard is truncated"
    ):
        validate_dataset(copy)


def test_sample_missing_a_field_names_shard_and_key(copy: Path) -> None:
    shard = copy / "train" / "shard-000000.tar"
    members = _members(shard)
    victim = members[len(members) // 2][0].name.split(".")[0]
    _rewrite(shard, [(m, d) for m, d in members if m.name != f"{victim}.flow.png"])
    with pytest.raises(DatasetError, match=r"(SHA-256 differs|bytes, stats\.json lists)"):
        validate_dataset(copy)  # the listed size / hash catches it first
    with pytest.raises(DatasetError) as info:
        validate_dataset(copy, check_hashes=False)
    message = str(info.value)
    assert str(shard) in message and repr(victim) in message and "flow.png" in message


@pytest.mark.parametrize(
    "rows, dim, expected",
    [
        (len(CLIP_ROWS), 7, r"clip\.npy \(clipimage\) is \(7,\)"),  # another CLIP's size than the first sample's
        (
            3,
            16,
            r"clip\.npy is \(3, 16\), expected \(4, D\): rows image, caption, objects, motion",
        ),  # a schema-2 sample
    ],
)
def test_field_with_the_wrong_shape_names_shard_and_key(copy: Path, rows: int, dim: int, expected: str) -> None:
    shard = copy / "train" / "shard-000001.tar"
    members = _members(shard)
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((rows, dim), np.float16))
    index = next(i for i, (m, _) in enumerate(members) if m.name.endswith(".clip.npy"))
    key = members[index][0].name.split(".")[0]
    members[index] = (members[index][0], buffer.getvalue())
    _rewrite(shard, members)
    with pytest.raises(DatasetError, match=rf"shard-000001\.tar: sample '{key}': .*{expected}"):
        validate_dataset(copy, check_hashes=False)


def test_modified_bytes_fail_the_hash(copy: Path) -> None:
    shard = copy / "train" / "shard-000000.tar"
    members = _members(shard)
    index = next(i for i, (m, _) in enumerate(members) if m.name.endswith(".json"))
    record = members[index][1]
    members[index] = (members[index][0], record.replace(b'"discount":1.0', b'"discount":2.0'))  # same size
    _rewrite(shard, members)
    assert (
        shard.stat().st_size == json.loads((copy / "stats.json").read_text())["splits"]["train"]["shards"][0]["bytes"]
    )
    with pytest.raises(DatasetError, match=r"shard-000000\.tar: SHA-256 differs"):
        validate_dataset(copy)
    validate_dataset(copy, check_hashes=False)  # structurally fine


def test_unlisted_shard_and_missing_metadata(copy: Path) -> None:
    shutil.copy(copy / "train" / "shard-000000.tar", copy / "train" / "shard-000009.tar")
    with pytest.raises(DatasetError, match=r"shard-000009\.tar are not listed in stats\.json"):
        validate_dataset(copy)
    (copy / "train" / "shard-000009.tar").unlink()
    (copy / "README.md").unlink()
    with pytest.raises(DatasetError, match=r"README\.md \(the dataset card\) is missing"):
        validate_dataset(copy)
    (copy / "stats.json").unlink()
    with pytest.raises(DatasetError, match=r"stats\.json is missing"):
        validate_dataset(copy)

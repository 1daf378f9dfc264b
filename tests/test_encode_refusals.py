"""Encode refuses inputs that belong to other episodes or tasks, leftovers of a failed annotate run and
non-finite flow, naming the file(s) and the fix, before the CLIP model is built or anything is written;
stats.json is strict JSON; temporaries of a killed run are removed by the next one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from support.datasets import ProjectionClip, write_synthetic_inputs

from pipeline.common.io import dumps_json, write_json_atomic, write_npz_atomic
from pipeline.config import EncodeParams, WeightsParams
from pipeline.dataset.schema import DatasetError
from pipeline.dataset.writer import write_metadata
from pipeline.encode.inputs import EncodeInputError
from pipeline.encode.run import run as encode

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TASKS = ("cartpole-swingup", "cheetah-run")
PARAMS = EncodeParams(shard_maxcount=4)


@pytest.fixture()
def inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    return write_synthetic_inputs(tmp_path / "in", TASKS, episodes=2, length=4, size=8, every_k=2)


@pytest.fixture()
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """These refusals come before any work: the CLIP model is never built."""

    def refuse(*args, **kwargs):
        raise AssertionError("the CLIP model was loaded before the inputs were checked")

    monkeypatch.setattr("pipeline.encode.run.load_clip", refuse)


def _refused(inputs: tuple[Path, Path, Path], out: Path) -> str:
    with pytest.raises(EncodeInputError) as info:
        encode(*inputs, out, PARAMS, WeightsParams())
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.*"))  # nothing written
    return str(info.value)


@pytest.mark.usefixtures("no_model")
def test_a_flow_file_copied_over_another_episodes_is_refused_naming_both(inputs, tmp_path: Path) -> None:
    episodes, flow, _ = inputs
    task = TASKS[0]
    shutil.copy(flow / task / "episode_000000.npz", flow / task / "episode_000001.npz")
    message = _refused(inputs, tmp_path / "out")
    assert str(flow / task / "episode_000001.npz") in message and str(episodes / task / "episode_000001.npz") in message
    assert "another episode" in message and "rerun the flow stage" in message


@pytest.mark.usefixtures("no_model")
def test_flow_and_annotations_of_episodes_collected_with_another_seed_are_refused(inputs, tmp_path: Path) -> None:
    episodes, flow, notes = inputs
    other = write_synthetic_inputs(tmp_path / "other", TASKS, episodes=2, length=4, size=8, every_k=2)
    # same shapes, other episodes: re-collected with another seed, flow and annotations left over
    from pipeline.sim.episodes import load_episode, save_episode

    ep = load_episode(other[0] / TASKS[1] / "episode_000000.npz")
    ep.rewards[0] += 1.0
    save_episode(episodes / TASKS[1] / "episode_000000.npz", ep)
    message = _refused(inputs, tmp_path / "out")
    assert (
        str(flow / TASKS[1] / "episode_000000.npz") in message
        and str(episodes / TASKS[1] / "episode_000000.npz") in message
    )
    # flow fixed (as if rerun), the annotations are still stale
    from support.datasets import restamp

    restamp(inputs, TASKS[1], 0)
    body = json.loads((other[2] / TASKS[1] / "episode_000000.json").read_text())
    write_json_atomic(notes / TASKS[1] / "episode_000000.json", body)  # made from another episode file
    message = _refused(inputs, tmp_path / "out")
    assert (
        str(notes / TASKS[1] / "episode_000000.json") in message
        and str(episodes / TASKS[1] / "episode_000000.npz") in message
    )
    assert "another episode" in message and "rerun the annotate stage" in message


@pytest.mark.usefixtures("no_model")
def test_an_annotation_file_of_another_task_is_refused(inputs, tmp_path: Path) -> None:
    _, _, notes = inputs
    path = notes / TASKS[0] / "episode_000001.json"
    body = json.loads(path.read_text())
    body["task"] = TASKS[1]  # its source still names the right episode file: only the task is foreign
    write_json_atomic(path, body)
    message = _refused(inputs, tmp_path / "out")
    assert (
        str(path) in message
        and "annotates task 'cheetah-run'" in message
        and "folder of task 'cartpole-swingup'" in message
    )
    # a whole file from the other task's folder: its source names another episode file
    shutil.copy(notes / TASKS[1] / "episode_000000.json", notes / TASKS[0] / "episode_000000.json")
    body["task"] = TASKS[0]
    write_json_atomic(path, body)
    message = _refused(inputs, tmp_path / "out")
    assert str(notes / TASKS[0] / "episode_000000.json") in message and "another episode" in message


@pytest.mark.usefixtures("no_model")
def test_annotation_files_without_source_must_be_regenerated(inputs, tmp_path: Path) -> None:
    _, _, notes = inputs
    path = notes / TASKS[0] / "episode_000000.json"
    body = json.loads(path.read_text())
    del body["source"]
    write_json_atomic(path, body)
    message = _refused(inputs, tmp_path / "out")
    assert str(path) in message and "source" in message and "rerun the annotate stage" in message


@pytest.mark.usefixtures("no_model")
def test_leftovers_of_a_failed_annotate_run_are_refused_naming_the_task(tmp_path: Path) -> None:
    failed = {(TASKS[1], i): tuple(range(0, 5, 2)) for i in range(2)}  # every annotated frame of cheetah-run failed
    inputs = write_synthetic_inputs(tmp_path / "in", TASKS, episodes=2, length=4, size=8, every_k=2, failed=failed)
    message = _refused(inputs, tmp_path / "out")
    assert (
        "task 'cheetah-run'" in message
        and "all 6 annotated frames failed" in message
        and "rerun the annotate stage" in message
    )


@pytest.mark.usefixtures("no_model")
@pytest.mark.parametrize("value", [1e6, np.nan, -np.inf])
def test_non_finite_flow_is_refused_before_anything_is_written(inputs, tmp_path: Path, value: float) -> None:
    _, flow, _ = inputs
    path = flow / TASKS[0] / "episode_000001.npz"
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    wide = arrays["flow"].astype(np.float32)
    wide[2, 1, 3, 4] = value  # 1e6 px is inf once stored as float16
    arrays["flow"] = wide
    write_npz_atomic(path, arrays)
    message = _refused(inputs, tmp_path / "out")
    assert (
        str(path) in message
        and "not finite at pair 2, channel 1, pixel (x=4, y=3)" in message
        and "rerun the flow stage" in message
    )


def test_stats_json_is_strict_json(tmp_path: Path) -> None:
    inputs = write_synthetic_inputs(tmp_path / "in", TASKS[:1], episodes=2, length=4, size=8, every_k=2)
    encode(*inputs, tmp_path / "ds", PARAMS, WeightsParams(), encoder=ProjectionClip(4))

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in stats.json")

    stats = json.loads((tmp_path / "ds" / "stats.json").read_text(), parse_constant=refuse)
    assert stats["splits"]["train"]["samples"] > 0
    # the writer refuses a non-finite statistic, naming it, and writes nothing
    with pytest.raises(DatasetError, match=r"stats\.json: stats\.train\.fields\.flow\.mean\.1 is not finite"):
        write_metadata(tmp_path / "bad", {}, {"train": {"fields": {"flow": {"mean": [0.0, float("inf")]}}}}, {}, "card")
    assert not (tmp_path / "bad" / "stats.json").exists()


def test_temporaries_of_a_killed_run_are_removed_by_the_next_one(tmp_path: Path) -> None:
    inputs = write_synthetic_inputs(tmp_path / "in", TASKS[:1], episodes=2, length=4, size=8, every_k=2)
    out = tmp_path / "data" / "dataset"
    stale = out.parent / ".dataset.k1ll3d_x.tmp"  # what SIGKILL during encode leaves (atomic_path's name)
    (stale / "train").mkdir(parents=True)
    (stale / "train" / "shard-000000.tar").write_bytes(b"\0" * 1024)
    others = [
        out.parent / ".dataset2.abcdefgh.tmp",
        out.parent / ".dataset.json.abcdefgh.tmp",
    ]  # other targets' temporaries
    for path in others:
        path.mkdir()
    encode(*inputs, out, PARAMS, WeightsParams(), encoder=ProjectionClip(4))
    assert not stale.exists() and all(p.exists() for p in others)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        [".dataset.json.abcdefgh.tmp", ".dataset2.abcdefgh.tmp", "dataset"]
    )


def test_strict_dumps_are_what_the_card_and_stats_hold(tmp_path: Path) -> None:
    """The provenance in the card is the stats.json provenance (one source), and both parse strictly."""
    inputs = write_synthetic_inputs(tmp_path / "in", TASKS[:1], episodes=2, length=4, size=8, every_k=2)
    encode(*inputs, tmp_path / "ds", PARAMS, WeightsParams(), encoder=ProjectionClip(4))
    stats = json.loads((tmp_path / "ds" / "stats.json").read_text())
    assert dumps_json(stats) == (tmp_path / "ds" / "stats.json").read_text()
    assert "source" not in stats["provenance"]["tasks"][TASKS[0]]["annotate"]  # per-episode provenance stays out

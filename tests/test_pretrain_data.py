"""The stacked-frame reader (pipeline.dataset.stacked): frame stacking at read time, targets, splitting over
workers and ranks; the dataset opened (and validated) through pipeline.dataset.open_dataset."""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from support.datasets import write_synthetic_dataset

from pipeline.dataset import DatasetError, open_dataset
from pipeline.dataset.codec import decode_flow_png
from pipeline.dataset.schema import TEXT_ROWS
from pipeline.dataset.stacked import StackedFrames, make_loader

pytestmark = pytest.mark.usefixtures("torch_one_thread")

STEPS = 9  # 10 frames per episode


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    # 2 tasks x 3 episodes x 10 frames; shards of 7 samples, so episodes cross shard boundaries
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("ds") / "dataset",
        episodes=3,
        steps=STEPS,
        size=16,
        clip_dim=8,
        shard_maxcount=7,
        annotate_every=4,
    )


def find_shards(dataset: Path, split: str) -> list[str]:
    return [str(p) for p in open_dataset(dataset).shards[split]]


def raw_frames(dataset: Path, split: str = "train") -> dict[str, dict]:
    """key -> decoded fields, read straight from the tars (independent of the loader)."""
    out = {}
    for sample in wds.DataPipeline(wds.SimpleShardList(find_shards(dataset, split)), wds.tarfile_to_samples()):
        out[sample["__key__"]] = {
            "rgb": np.asarray(Image.open(io.BytesIO(sample["rgb.png"])).convert("RGB")),
            "flow": decode_flow_png(sample["flow.png"])[0],
            "json": json.loads(sample["json"]),
            "url": sample["__url__"],
        }
    return out


def key(task: str, episode: int, step: int) -> str:
    return f"{task}__ep{episode:06d}__{step:06d}"


def test_open_dataset(dataset: Path) -> None:
    info = open_dataset(dataset)
    assert (info.image_size, info.embed_dim) == (16, 8)
    assert info.samples == {"train": 40, "validation": 20}
    assert len(info.shards["train"]) == 6 and len(info.shards["validation"]) == 3  # 40 and 20 samples, 7 per shard
    assert info.field_stats("train")["rgb.png"]["count"] == 40 * 16 * 16


def test_frames_are_stacked_oldest_first_with_targets_of_the_last_transition(dataset: Path) -> None:
    raw = raw_frames(dataset)
    samples = {s["key"]: s for s in StackedFrames(find_shards(dataset, "train"), frame_stack=3)}
    assert samples.keys() == raw.keys()
    checked_inside = checked_start = checked_boundary = 0
    for k, s in samples.items():
        task, ep, step = k.split("__")[0], int(k.split("__ep")[1][:6]), int(k[-6:])
        assert s["obs"].shape == (9, 16, 16) and s["obs"].dtype == np.uint8
        assert s["flow"].dtype == np.float32 and s["flow_valid"].dtype == bool
        assert s["clip_image"].shape == (8,) and s["clip_text"].shape == (len(TEXT_ROWS), 8)
        assert s["text_valid"] == (step % 4 == 0)
        np.testing.assert_array_equal(s["obs"][6:], raw[k]["rgb"].transpose(2, 0, 1))
        prev = key(task, ep, step - 1)
        if step >= 2 and raw[key(task, ep, step - 2)]["url"] == raw[k]["url"]:
            # inside an episode and a shard: frames t-2, t-1, t; flow and reward of t-1 -> t
            np.testing.assert_array_equal(s["obs"][:3], raw[key(task, ep, step - 2)]["rgb"].transpose(2, 0, 1))
            np.testing.assert_array_equal(s["obs"][3:6], raw[prev]["rgb"].transpose(2, 0, 1))
            np.testing.assert_array_equal(s["flow"], raw[prev]["flow"].astype(np.float32))
            assert s["flow_valid"].all() and s["reward_valid"]
            assert s["reward"] == pytest.approx(raw[prev]["json"]["reward"])
            checked_inside += 1
        elif step == 0:
            # episode start: the first frame repeated, no flow or reward target
            for i in range(3):
                np.testing.assert_array_equal(s["obs"][3 * i : 3 * i + 3], s["obs"][6:])
            assert not s["flow_valid"].any() and not s["reward_valid"]
            checked_start += 1
        elif raw[prev]["url"] != raw[k]["url"]:
            # an episode continuing from the previous shard starts over (repeat the first available frame)
            np.testing.assert_array_equal(s["obs"][:3], s["obs"][6:])
            assert not s["reward_valid"]
            checked_boundary += 1
    assert checked_inside > 10 and checked_start == 4 and checked_boundary >= 1


def test_fewer_shards_than_workers_neither_hangs_nor_raises(tmp_path: Path) -> None:
    ds = write_synthetic_dataset(
        tmp_path / "one", tasks=("a",), episodes=2, steps=STEPS, val_fraction=0.5, size=16, clip_dim=4
    )
    shards = find_shards(ds, "train")
    assert len(shards) == 1
    (train_episode,) = json.loads((ds / "stats.json").read_text())["provenance"]["tasks"]["a"]["splits"]["train"]
    # one pass with 2 workers: every sample exactly once
    loader = make_loader(shards, 2, batch_size=4, workers=2, repeat=False)
    keys = [k for batch in loader for k in batch["key"]]
    assert Counter(keys) == Counter(key("a", train_episode, t) for t in range(STEPS + 1))
    # training streams are endless, even with more consumers than shards
    loader = make_loader(shards, 2, batch_size=4, workers=2, repeat=True, shuffle_buffer=8, rank=1, world_size=2)
    batches = [b for _, b in zip(range(6), loader, strict=False)]
    assert all(b["obs"].shape == (4, 6, 16, 16) and b["obs"].dtype == torch.uint8 for b in batches)


def test_ranks_and_workers_partition_the_data(dataset: Path) -> None:
    shards = find_shards(dataset, "train")
    everything = Counter(s["key"] for s in StackedFrames(shards, 3))
    per_rank = []
    for rank in range(2):
        loader = make_loader(
            shards, 3, batch_size=5, workers=2, repeat=False, rank=rank, world_size=2, shuffle_buffer=10
        )
        per_rank.append(Counter(k for b in loader for k in b["key"]))
    assert per_rank[0] + per_rank[1] == everything
    assert not (per_rank[0].keys() & per_rank[1].keys())


def test_shuffled_stream_is_deterministic_given_the_seed(dataset: Path) -> None:
    shards = find_shards(dataset, "train")

    def keys(seed: int) -> list[str]:
        loader = make_loader(shards, 3, batch_size=4, workers=2, seed=seed, shuffle_buffer=16, repeat=True)
        return [k for _, b in zip(range(15), loader, strict=False) for k in b["key"]]

    first = keys(0)
    assert first == keys(0)
    assert first != keys(1)
    assert len(set(first)) > 30  # shuffled across the buffer, repeating after one pass of 40


def test_missing_dataset_and_bad_samples_are_named(tmp_path: Path) -> None:
    import tarfile

    with pytest.raises(DatasetError, match="run the encode stage"):
        open_dataset(tmp_path / "nothing")
    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard, "w") as tar:
        data = b"{}"
        info = tarfile.TarInfo("x__ep000000__000000.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DatasetError, match=r"lacks .*rgb\.png.*rebuild the dataset \(semore encode\)"):
        list(StackedFrames([shard], frame_stack=3))


def _replace_member(shard: Path, suffix: str, data: bytes) -> str:
    """Rewrite ``shard`` with the first member ending in ``suffix`` replaced by ``data``; returns its key."""
    import tarfile

    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    index = next(i for i, (m, _) in enumerate(members) if m.name.endswith(suffix))
    members[index] = (members[index][0], data)
    with tarfile.open(shard, "w") as tar:
        for info, payload in members:
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return members[index][0].name.split(".")[0]


def test_a_corrupt_png_in_a_shard_is_named_while_streaming(dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "dataset"
    shutil.copytree(dataset, copy)
    shard = copy / "train" / "shard-000000.tar"
    victim = _replace_member(shard, ".rgb.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(DatasetError, match=r"(SHA-256 differs|bytes, stats\.json lists)"):
        open_dataset(copy)  # caught on open by the listed size / hash
    stream = StackedFrames([shard], frame_stack=3)  # a reader that skipped the check still names the culprit
    with pytest.raises(DatasetError) as info:
        list(stream)
    assert (
        str(shard) in str(info.value)
        and repr(victim) in str(info.value)
        and "rgb.png does not decode" in str(info.value)
    )


def test_a_truncated_shard_is_named_while_streaming(dataset: Path, tmp_path: Path) -> None:
    shard = tmp_path / "shard-000000.tar"
    shard.write_bytes((dataset / "train" / "shard-000000.tar").read_bytes()[:5000])
    with pytest.raises(DatasetError, match=r"shard-000000\.tar: truncated or not a tar file"):
        list(StackedFrames([shard], frame_stack=3))


@pytest.fixture(scope="module")
def sparse(tmp_path_factory) -> Path:
    # 2 tasks x 4 episodes x 20 frames, every 10th frame annotated (steps 0 and 10): 10% of the frames
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("sparse") / "dataset",
        episodes=4,
        steps=19,
        size=16,
        clip_dim=8,
        shard_maxcount=9,
        annotate_every=10,
        val_fraction=0.25,
    )


def _annotated_counts(loader, batches: int) -> tuple[list[int], list[str]]:
    counts, keys = [], []
    for _, batch in zip(range(batches), loader, strict=False):
        counts.append(int(batch["text_valid"].sum()))
        keys += batch["key"]
    return counts, keys


@pytest.mark.parametrize(("workers", "rank", "world_size"), [(0, 0, 1), (2, 0, 1), (2, 1, 2)])
def test_every_batch_holds_the_requested_annotated_frames(
    sparse: Path, workers: int, rank: int, world_size: int
) -> None:
    shards = find_shards(sparse, "train")
    loader_args = dict(workers=workers, seed=3, shuffle_buffer=16, repeat=True, rank=rank, world_size=world_size)
    plain, _ = _annotated_counts(make_loader(shards, 3, 8, **loader_args), 40)
    assert min(plain) < 3 and 0 in plain  # without the guarantee some batches lack annotated frames

    counts, keys = _annotated_counts(make_loader(shards, 3, 8, annotated_per_batch=3, **loader_args), 40)
    assert min(counts) >= 3, counts
    assert (
        _annotated_counts(make_loader(shards, 3, 8, annotated_per_batch=3, **loader_args), 40)[1] == keys
    )  # deterministic
    # the main stream is not thinned out: the unannotated frames all still come round
    unannotated = {k for k in keys if int(k[-6:]) % 10}
    everything = {s["key"] for s in StackedFrames(shards, 3) if not s["text_valid"]}
    if world_size == 1:
        assert unannotated == everything


def test_mix_annotated_keeps_every_sample_and_only_adds_annotated_ones() -> None:
    from pipeline.dataset.stacked import mix_annotated

    stream = [{"id": i, "text_valid": i % 7 == 0} for i in range(50)]
    extra = ({"id": f"a{i}", "text_valid": True} for i in range(1000))
    out = list(mix_annotated(iter(stream), extra, group=5, need=2))
    groups = [out[i : i + 5] for i in range(0, len(out), 5)]
    assert all(sum(s["text_valid"] for s in g) >= 2 for g in groups[:-1])
    assert [s["id"] for s in out if isinstance(s["id"], int)] == list(range(50))  # every sample once, in order
    assert all(s["text_valid"] for s in out if isinstance(s["id"], str))
    # a stream already rich in annotated frames takes nothing extra
    rich = [{"id": i, "text_valid": i % 2 == 0} for i in range(20)]
    assert list(mix_annotated(iter(rich), iter(()), group=4, need=2)) == rich


def test_annotated_only_stream_splits_annotated_frames_over_consumers(sparse: Path) -> None:
    from pipeline.dataset.stacked import stacked_samples

    shards = find_shards(sparse, "train")
    everything = [s["key"] for s in stacked_samples(shards, 3, only_annotated=True)]
    assert len(everything) == 12 and all(int(k[-6:]) % 10 == 0 for k in everything)
    # (keeping every 2nd *frame* instead would hand a consumer only the annotated frames at its parity)
    parts = [[s["key"] for s in stacked_samples(shards, 3, keep=(i, 2), only_annotated=True)] for i in range(2)]
    assert all(parts) and sorted(parts[0] + parts[1]) == sorted(everything)

"""Encode stage: shards load with HF datasets and webdataset with the documented schema; byte-identical
reruns; split by episode; statistics; the dataset card; a run on really collected episodes."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from support.datasets import simulate_inputs, write_synthetic_inputs

from pipeline.config import EncodeParams, WeightsParams
from pipeline.dataset import FIELDS, SPLITS, hf_features, parse_key, validate_dataset
from pipeline.dataset.codec import decode_flow_png
from pipeline.dataset.schema import CLIP_ROWS, FIELD_DOCS, JSON_DOCS, TEXT_ROWS, text_targets
from pipeline.encode.clip import load_clip
from pipeline.encode.inputs import EpisodeInputs, assign_splits
from pipeline.encode.run import run as encode
from pipeline.sim.episodes import load_episode

TASKS = ("cartpole-swingup", "walker.walk")  # a dot in a task name must not reach the sample keys
EPISODES, LENGTH, SIZE, EVERY_K = 3, 8, 16, 3
FAILED = {("cartpole-swingup", 1): (3,)}
PARAMS = EncodeParams(shard_maxcount=7, batch_size=16)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("encode_inputs")
    return write_synthetic_inputs(root, TASKS, EPISODES, LENGTH, SIZE, EVERY_K, failed=FAILED)


@pytest.fixture(scope="module")
def dataset(inputs: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("encode_out") / "dataset"
    encode(*inputs, out, PARAMS, WeightsParams())
    return out


def _shards(dataset: Path, split: str) -> list[str]:
    return sorted(str(p) for p in (dataset / split).glob("shard-*.tar"))


def _kitti_flow(key: str, data: bytes):
    """A webdataset decoder for the 16-bit flow PNG (its default PNG decoder, PIL, keeps only 8 bits)."""
    return decode_flow_png(data) if key.lstrip(".") == "flow.png" else None  # webdataset passes ".flow.png"


def _wds_samples(dataset: Path, split: str) -> list[dict]:
    import webdataset as wds

    samples = list(wds.WebDataset(_shards(dataset, split), shardshuffle=False).decode(_kitti_flow, "rgb8"))
    for s in samples:  # the documented split of the two combined fields
        s["flow"], s["flowvalid"] = s.pop("flow.png")
        s["clipimage"], s["cliptext"] = s["clip.npy"][0], s["clip.npy"][1:]
    return samples


def test_every_sample_has_the_documented_fields_shapes_and_dtypes(
    dataset: Path, inputs: tuple[Path, Path, Path]
) -> None:
    episodes_dir, flow_dir, _ = inputs
    dim = validate_dataset(dataset).embed_dim
    assert dim == 128  # semore-tiny-clip
    seen: list[tuple[str, int, int]] = []
    for split in SPLITS:
        samples = _wds_samples(dataset, split)
        assert samples, split
        for s in samples:
            key = s["__key__"]
            assert "." not in key and re.fullmatch(r"[A-Za-z0-9_-]+__ep\d{6}__\d{6}", key)
            assert set(s) - {
                "__key__",
                "__url__",
                "__local_path__",
                "flow",
                "flowvalid",
                "clipimage",
                "cliptext",
            } == set(FIELDS) - {"flow.png"}
            assert s["rgb.png"].shape == (SIZE, SIZE, 3) and s["rgb.png"].dtype == np.uint8
            assert s["flow"].shape == (2, SIZE, SIZE) and s["flow"].dtype == np.float32
            assert s["flowvalid"].shape == (SIZE, SIZE) and s["flowvalid"].dtype == np.bool_
            assert s["clip.npy"].shape == (len(CLIP_ROWS), dim) and s["clip.npy"].dtype == np.float16
            assert np.linalg.norm(s["clipimage"].astype(np.float32)) == pytest.approx(1.0, abs=2e-3)
            rec = s["json"]
            assert set(rec) == {k.split(".")[0] for k in JSON_DOCS}
            assert set(rec["annotation"]) == {"status", "caption", "objects", "motion", "error"}
            task, episode, step = rec["task"], rec["episode"], rec["step"]
            assert parse_key(key) == (task.replace(".", "-"), episode, step)
            seen.append((task, episode, step))
            ep = load_episode(episodes_dir / task / f"episode_{episode:06d}.npz")
            flow = np.load(flow_dir / task / f"episode_{episode:06d}.npz")
            np.testing.assert_array_equal(s["rgb.png"], ep.frames[step])  # lossless
            np.testing.assert_array_equal(rec["qpos"], ep.qpos[step])  # float64, exact
            last = step == LENGTH
            assert rec["has_action"] is (not last) and rec["length"] == LENGTH
            if last:
                assert not s["flow"].any() and not s["flowvalid"].any()
                assert rec["action"] == [0.0, 0.0] and rec["reward"] == 0.0 and rec["discount"] == 1.0
            else:
                # KITTI flow PNG: 1/64 px steps, so within 1/128 px of the flow file; the mask exactly
                np.testing.assert_allclose(s["flow"], flow["flow"][step].astype(np.float32), rtol=0, atol=1 / 128)
                np.testing.assert_array_equal(s["flow"] * 64, np.round(s["flow"] * 64))
                np.testing.assert_array_equal(s["flowvalid"], flow["valid"][step])
                np.testing.assert_array_equal(np.float32(rec["action"]), ep.actions[step])  # float32, exact
                assert (
                    np.float32(rec["reward"]) == ep.rewards[step] and np.float32(rec["discount"]) == ep.discounts[step]
                )
                assert rec["truncated"] is bool(ep.truncated[step])
            failed = step in FAILED.get((task, episode), ())
            annotated = step % EVERY_K == 0 and not failed
            assert rec["annotated"] is annotated
            text_norms = np.linalg.norm(s["cliptext"].astype(np.float32), axis=1)
            if annotated:
                assert rec["annotation"]["status"] == "ok" and rec["annotation"]["caption"]
                assert rec["annotation"]["objects"][0]["box"] == [1.0, 2.0, 10.0, 12.0]
                assert rec["annotation"]["objects"][1]["box"] == []  # null box -> empty list, one schema
                np.testing.assert_allclose(text_norms, 1.0, atol=2e-3)
            else:
                assert rec["annotation"]["status"] == ("failed" if failed else "none")
                assert rec["annotation"]["objects"] == [] and rec["annotation"]["caption"] == ""
                assert bool(rec["annotation"]["error"]) is failed
                assert not text_norms.any()
    # every frame exactly once; within a split, samples in (task, episode, step) order
    assert sorted(seen) == sorted({(t, e, s) for t in TASKS for e in range(EPISODES) for s in range(LENGTH + 1)})


def test_split_is_by_episode_and_ordered(dataset: Path) -> None:
    where: dict[tuple[str, int], set[str]] = {}
    for split in SPLITS:
        order = [(s["json"]["task"], s["json"]["episode"], s["json"]["step"]) for s in _wds_samples(dataset, split)]
        assert order == sorted(order)
        for task, episode, _ in order:
            where.setdefault((task, episode), set()).add(split)
    assert all(len(splits) == 1 for splits in where.values())
    for task in TASKS:  # 3 episodes * 0.25 -> one validation episode per task
        assert sum("validation" in where[(task, e)] for e in range(EPISODES)) == 1


def test_assign_splits_rules() -> None:
    eps = [EpisodeInputs("a", i, Path(), Path(), Path()) for i in range(8)] + [
        EpisodeInputs("b", 0, Path(), Path(), Path())
    ]
    split = assign_splits(eps, 0.25, seed=0)
    assert sum(v == "validation" for (t, _), v in split.items() if t == "a") == 2
    assert split[("b", 0)] == "train"  # a task's only episode never goes to validation
    assert split == assign_splits(list(reversed(eps)), 0.25, seed=0)  # order-independent
    assert all(v == "train" for v in assign_splits(eps, 0.0, seed=0).values())
    two = [EpisodeInputs("c", i, Path(), Path(), Path()) for i in range(2)]
    assert sorted(assign_splits(two, 0.1, seed=0).values()) == ["train", "validation"]  # at least one when > 0


def test_hf_datasets_loads_both_splits_and_streams(dataset: Path, tmp_path: Path) -> None:
    import datasets

    files = {s: _shards(dataset, s) for s in SPLITS}
    ds = datasets.load_dataset("webdataset", data_files=files, features=hf_features(), cache_dir=str(tmp_path / "hf"))
    stats = json.loads((dataset / "stats.json").read_text())
    for split in SPLITS:
        assert ds[split].num_rows == stats["splits"][split]["samples"]
        assert ds[split].features == hf_features()
    row = ds["train"].with_format("numpy")[0]
    assert row["clip.npy"].shape == (len(CLIP_ROWS), 128) and np.asarray(row["rgb.png"]).shape == (SIZE, SIZE, 3)
    flow, valid = decode_flow_png(row["flow.png"])  # bytes, decoded exactly (HF's image decoder would keep 8 bits)
    assert flow.shape == (2, SIZE, SIZE) and valid.dtype == np.bool_ and valid.any()
    first = _wds_samples(dataset, "train")[0]
    np.testing.assert_array_equal(flow, first["flow"])
    assert row["json"]["annotation"]["status"] == "ok"

    streamed = datasets.load_dataset(
        "webdataset", data_files=files, features=hf_features(), streaming=True, split="validation"
    )
    keys = [ex["__key__"] for ex in streamed]
    assert keys == [k for k in ds["validation"]["__key__"]] and len(keys) == stats["splits"]["validation"]["samples"]

    # The folder itself (the card's configs and features), as from the Hub.
    local = datasets.load_dataset(str(dataset), cache_dir=str(tmp_path / "hf2"))
    assert set(local) == set(SPLITS) and local["train"].features == hf_features()
    assert local["train"].num_rows == ds["train"].num_rows


def test_first_samples_without_key_objects_load_with_the_declared_features(tmp_path: Path) -> None:
    import datasets

    inputs = write_synthetic_inputs(
        tmp_path / "in", ("reacher-easy",), 1, 6, 8, every_k=6, failed={("reacher-easy", 0): (0,)}
    )
    out = tmp_path / "ds"
    encode(*inputs, out, EncodeParams(val_fraction=0.0), WeightsParams())
    ds = datasets.load_dataset(
        "webdataset",
        data_files={"train": _shards(out, "train")},
        features=hf_features(),
        cache_dir=str(tmp_path / "hf"),
        split="train",
    )
    objects = [row["json"]["annotation"]["objects"] for row in ds]
    assert objects[0] == [] and objects[6][0]["name"] == "square"  # failed at step 0, ok at step 6


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_two_runs_give_byte_identical_outputs(dataset: Path, inputs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    again = tmp_path / "again"
    encode(*inputs, again, PARAMS, WeightsParams())
    first, second = _digests(dataset), _digests(again)
    assert first == second
    assert sum(name.endswith(".tar") for name in first) >= 4
    assert {"README.md", "stats.json"} <= set(first)
    # the random CLIP init is seeded: another seed gives other embeddings
    other = tmp_path / "other"
    seeded = PARAMS.model_copy(update={"seed": 1})
    encode(*inputs, other, seeded, WeightsParams(), encoder=load_clip(seeded, WeightsParams()))
    embeddings = {s["__key__"]: s["clipimage"] for split in SPLITS for s in _wds_samples(other, split)}
    base = _wds_samples(dataset, "train")[0]
    assert not np.array_equal(embeddings[base["__key__"]], base["clipimage"])


def test_shard_layout_and_tar_metadata(dataset: Path) -> None:
    import tarfile

    stats = json.loads((dataset / "stats.json").read_text())
    train = stats["splits"]["train"]
    assert [s["name"] for s in train["shards"]] == [f"shard-{i:06d}.tar" for i in range(len(train["shards"]))]
    assert all(s["samples"] <= PARAMS.shard_maxcount for s in train["shards"])
    with tarfile.open(dataset / "train" / "shard-000000.tar") as tar:
        members = tar.getmembers()
    assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in members} == {(0, 0, 0, "semore", 0o444)}
    names = [m.name for m in members]
    first_key = names[0].split(".")[0]
    assert names[: len(FIELDS)] == [f"{first_key}.{f}" for f in sorted(FIELDS)]  # sorted members


def test_stats_match_the_stored_data(dataset: Path, inputs: tuple[Path, Path, Path]) -> None:
    episodes_dir, flow_dir, _ = inputs
    stats = json.loads((dataset / "stats.json").read_text())
    train = [(s["json"]["task"], s["json"]["episode"]) for s in _wds_samples(dataset, "train")]
    frames, flows, rewards = [], [], []
    for task, episode in sorted(set(train)):
        ep = load_episode(episodes_dir / task / f"episode_{episode:06d}.npz")
        flow = np.load(flow_dir / task / f"episode_{episode:06d}.npz")
        frames.append(ep.frames.reshape(-1, 3))
        stored = np.round(flow["flow"].astype(np.float64) * 64) / 64  # what flow.png holds
        flows.append(np.moveaxis(stored, 1, -1)[flow["valid"]])
        rewards.append(ep.rewards)
    fields = stats["stats"]["train"]["fields"]
    rgb, fl = np.concatenate(frames).astype(np.float64), np.concatenate(flows)
    np.testing.assert_allclose(fields["rgb.png"]["mean"], rgb.mean(0), rtol=1e-9)
    np.testing.assert_allclose(fields["rgb.png"]["std"], rgb.std(0), rtol=1e-9)
    np.testing.assert_allclose(fields["rgb.png"]["min"], rgb.min(0))
    np.testing.assert_allclose(fields["rgb.png"]["max"], rgb.max(0))
    np.testing.assert_allclose(fields["flow.png"]["mean"], fl.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fields["flow.png"]["std"], fl.std(0), rtol=1e-9)
    assert fields["json.reward"]["mean"] == pytest.approx(float(np.concatenate(rewards).astype(np.float64).mean()))
    assert fields["flow.png:valid"]["mean"] == pytest.approx(LENGTH / (LENGTH + 1))  # all valid but the last frame
    assert stats["stats"]["train"]["samples"] == len(train)
    assert len(fields["clip.npy"]["image"]["mean"]) == 128
    assert fields["clip.npy"]["caption"]["count"] == sum(
        1 for t, e in set(train) for s in range(0, LENGTH + 1, EVERY_K) if s not in FAILED.get((t, e), ())
    )
    assert set(fields["json.per_task"]) == set(TASKS)


def test_card_header_parses_and_documents_everything(dataset: Path) -> None:
    import datasets
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(dataset / "README.md")
    data = card.data.to_dict()
    config = data["configs"][0]
    assert {f["split"]: f["path"] for f in config["data_files"]} == {
        "train": "train/shard-*.tar",
        "validation": "validation/shard-*.tar",
    }
    assert data["license"] == "mit" and data["size_categories"] == ["n<1K"]
    assert "reinforcement-learning" in data["task_categories"] and "webdataset" in data["tags"]
    info = datasets.DatasetInfo._from_yaml_dict(data["dataset_info"])
    assert info.features == hf_features()
    assert {s["name"] for s in data["dataset_info"]["splits"]} == set(SPLITS)
    for field in FIELD_DOCS:
        assert f"`{field}`" in card.text
    for key in JSON_DOCS:
        assert f"`{key}`" in card.text
    block = re.search(r"```json\n(.*?)\n```", card.text, re.S)
    assert block is not None
    provenance = json.loads(block.group(1))
    assert provenance == json.loads((dataset / "stats.json").read_text())["provenance"]
    assert provenance["clip"]["random_init"] is True and provenance["clip"]["weights"]["sha256"] == "random init"
    assert provenance["encode_params"]["shard_maxcount"] == PARAMS.shard_maxcount
    assert set(provenance["tasks"]) == set(TASKS)
    assert provenance["tasks"]["walker.walk"]["annotate"]["prompt"] == "Describe {task}."
    assert provenance["tasks"]["walker.walk"]["flow"]["backend"] == "synthetic"
    assert "RANDOM INIT" in card.text and "Warning" in card.text
    assert str(dataset) not in card.text and "/tmp" not in json.dumps(provenance)  # no absolute paths of this run


def test_really_collected_episodes(tmp_path: Path) -> None:
    """collect -> flow (simulator) -> annotate (simulator) -> encode, with the upstream libraries."""
    task = "cartpole-swingup"
    params, episodes, flow, notes = simulate_inputs(
        tmp_path, task, {"episodes_per_task": 2, "episode_steps": 5, "image_size": 24}, 2
    )
    out = tmp_path / "dataset"
    summary = encode(episodes, flow, notes, out, EncodeParams(val_fraction=0.5, shard_maxcount=4), params.weights)
    check = validate_dataset(out)
    assert check.samples == {"train": 6, "validation": 6} == {s: v["samples"] for s, v in summary.splits.items()}
    samples = _wds_samples(out, "train") + _wds_samples(out, "validation")
    for s in samples:
        rec = s["json"]
        ep = load_episode(episodes / task / f"episode_{rec['episode']:06d}.npz")
        np.testing.assert_array_equal(s["rgb.png"], ep.frames[rec["step"]])
        assert rec["annotated"] is (rec["step"] % 2 == 0)
        assert bool(np.abs(s["cliptext"][0].astype(np.float32)).sum() > 0) is rec["annotated"]
        assert len(rec["qpos"]) == ep.qpos.shape[1] and len(rec["action"]) == ep.actions.shape[1]
    moving = [s for s in samples if s["json"]["has_action"]]
    assert any(s["flowvalid"].any() for s in moving)
    provenance = json.loads((out / "stats.json").read_text())["provenance"]["tasks"][task]
    assert provenance["collect"]["suite"] and provenance["annotate"]["backend"] == "simulator"


def test_float32_fields_are_written_as_their_shortest_exact_decimals() -> None:
    from pipeline.encode.samples import float32_value

    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.standard_normal(20_000).astype(np.float32),
            (rng.standard_normal(5_000) * 10.0 ** rng.integers(-30, 30, 5_000)).astype(np.float32),
            np.array(
                [
                    0.0,
                    -0.0,
                    1.0,
                    np.finfo(np.float32).max,
                    np.finfo(np.float32).tiny,
                    np.finfo(np.float32).smallest_subnormal,
                ],
                np.float32,
            ),
        ]
    )
    written = [float32_value(v) for v in values]
    np.testing.assert_array_equal(np.array(written, np.float32), values)  # exact after the JSON round trip
    assert json.loads(json.dumps(written)) == written
    assert float32_value(np.float32(0.24024544656276703)) == 0.24024545  # not the float64 expansion's 17 digits


def test_text_rows_embed_the_caption_objects_and_motion_sentence(dataset: Path) -> None:
    """clip.npy's text rows are the CLIP text embeddings of text_targets(annotation), row for row:
    the motion sentence included (the motion path's text target), not a copy of another row."""
    encoder = load_clip(PARAMS, WeightsParams())
    checked = 0
    for s in _wds_samples(dataset, "train"):
        rec = s["json"]
        if not rec["annotated"]:
            continue
        texts = text_targets(rec["annotation"])
        assert texts[TEXT_ROWS.index("motion")] == rec["annotation"]["motion"].strip() != ""
        expected = encoder.encode_texts(list(texts)).astype(np.float16)
        np.testing.assert_allclose(s["cliptext"].astype(np.float32), expected.astype(np.float32), atol=2e-3)
        motion = s["cliptext"][TEXT_ROWS.index("motion")].astype(np.float32)
        assert all(np.abs(motion - s["cliptext"][i].astype(np.float32)).max() > 1e-2 for i in range(len(TEXT_ROWS) - 1))
        checked += 1
    assert checked >= 3

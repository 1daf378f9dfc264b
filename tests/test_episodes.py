"""The episode file: schema checks from the headers, and damaged files named with the fix in every stage
that reads them."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from support.episodes import make_episode

from pipeline.cli import main as cli_main
from pipeline.common.errors import UserError
from pipeline.common.io import write_npz_atomic
from pipeline.sim.episodes import (
    Episode,
    EpisodeFileError,
    EpisodeMeta,
    check_episodes,
    episode_filename,
    load_episode,
    load_meta,
    read_header,
    save_episode,
)

SIZE = 12


def tiny_episode(steps: int = 3, index: int = 0, task: str = "synthetic-planes", truth: bool = True) -> Episode:
    """A schema-valid episode of random content: ``steps`` steps of SIZE x SIZE frames, one geom on body 1."""
    rng = np.random.default_rng(index)
    n = steps + 1
    quat = np.zeros((n, 2, 4))
    quat[..., 0] = 1.0
    extrinsics = np.tile(np.eye(4), (n, 1, 1))
    c = (SIZE - 1) / 2
    segmentation = np.where(rng.random((n, SIZE, SIZE)) < 0.5, 0, -1).astype(np.int32)
    return make_episode(
        rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8),
        actions=rng.uniform(-1, 1, (steps, 1)).astype(np.float32),
        body_pos=np.tile(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]]), (n, 1, 1)),
        body_quat=quat,
        camera_extrinsics=extrinsics,
        camera_intrinsics=np.array([[10.0, 0.0, c], [0.0, 10.0, c], [0.0, 0.0, 1.0]]),
        geom_body=np.array([1]),
        depth=np.full((n, SIZE, SIZE), 2.0, np.float32) if truth else None,
        segmentation=segmentation if truth else None,
        task=task,
        index=index,
    )


def write_folder(folder: Path, count: int = 2, steps: int = 3) -> list[Path]:
    paths = []
    for i in range(count):
        path = folder / episode_filename(i)
        save_episode(path, tiny_episode(steps, i))
        paths.append(path)
    return paths


def truncate(path: Path) -> None:
    """Cut the file in half, as a killed copy or a full disk leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def damage_crc(path: Path, member: str = "frames.npy") -> None:
    """Flip a byte in the middle of ``member``'s compressed data (a bad sector / bit rot): its CRC no longer matches."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    data = bytearray(path.read_bytes())
    (name_len, extra_len) = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {"truncated": truncate, "crc": damage_crc}


# ---- one file --------------------------------------------------------------------------------


def test_header_describes_the_file_without_loading_it(tmp_path: Path) -> None:
    (path,) = write_folder(tmp_path, count=1, steps=4)
    header = read_header(path)
    assert header.length == 4 and header.frame_size == (SIZE, SIZE) and header.meta.task == "synthetic-planes"
    assert header.shapes["frames"] == ((5, SIZE, SIZE, 3), np.dtype(np.uint8))
    assert header.has("depth", "segmentation") and not header.has("flow")
    save_episode(path, tiny_episode(4, truth=False))
    assert not read_header(path).has("depth")


def test_load_decompresses_only_the_fields_asked_for(tmp_path: Path) -> None:
    (path,) = write_folder(tmp_path, count=1)
    episode = load_episode(path, ["frames"])
    np.testing.assert_array_equal(episode.frames, tiny_episode().frames)
    assert episode.depth.shape == (0,) and episode.actions.shape == (0,)
    full = load_episode(path)
    full.validate()
    np.testing.assert_array_equal(full.segmentation, tiny_episode().segmentation)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_file_is_a_user_error_naming_it_and_the_fix(tmp_path: Path, damage: str) -> None:
    folder = tmp_path / "cartpole-swingup"
    (path,) = write_folder(folder, count=1)
    DAMAGE[damage](path)
    expected = (
        rf"(?s){path.name}: unreadable episode file \(BadZipFile: .*Fix: rerun the collect stage "
        rf".*semore collect --task cartpole-swingup --out {folder}"
    )
    with pytest.raises(EpisodeFileError, match=expected) as info:
        load_episode(path)
    assert isinstance(info.value, UserError) and isinstance(
        info.value, ValueError
    )  # callers catching ValueError still do
    if damage == "truncated":  # the zip directory is gone: even the header and the meta are unreadable
        with pytest.raises(EpisodeFileError, match=expected):
            read_header(path)
        with pytest.raises(EpisodeFileError, match=expected):
            load_meta(path)
    else:  # the zip directory is intact, the frames' bytes are not: found when they are read
        with pytest.raises(EpisodeFileError, match=r"Bad CRC-32 for file 'frames\.npy'|Error -3"):
            load_episode(path, ["frames"])


def _write_arrays(path: Path, episode: Episode, **changes: np.ndarray) -> None:
    """Write ``episode`` with some members replaced, bypassing the schema check of :func:`save_episode`."""
    arrays = episode.to_arrays()
    arrays.update(changes)
    write_npz_atomic(path, arrays)


def test_frames_that_disagree_with_actions_are_refused_from_the_header(tmp_path: Path) -> None:
    episode = tiny_episode(steps=3)
    path = tmp_path / episode_filename(0)
    _write_arrays(path, episode, frames=episode.frames[:3])  # 3 frames for 3 actions
    with pytest.raises(
        EpisodeFileError,
        match=r"episode_000000\.npz: episode: frames has 3 entries but actions 3: "
        r"an episode of T steps has T\+1 frames",
    ):
        read_header(path)
    with pytest.raises(EpisodeFileError, match="frames has 3 entries"):
        load_episode(path, ["frames"])


@pytest.mark.parametrize(
    ("member", "value", "message"),
    [
        ("depth", np.zeros((4, SIZE, SIZE), np.float64), r"member 'depth': dtype float64, expected float32"),
        (
            "segmentation",
            np.zeros((4, SIZE, SIZE + 1), np.int32),
            r"member 'segmentation': shape \(4, 12, 13\), expected \(4, 12, 12\)",
        ),
        ("qpos", np.zeros((3, 1)), r"member 'qpos': shape \(3, 1\), expected \(4, None\)"),
    ],
)
def test_a_member_off_schema_is_named(tmp_path: Path, member: str, value: np.ndarray, message: str) -> None:
    path = tmp_path / episode_filename(0)
    _write_arrays(path, tiny_episode(steps=3), **{member: value})
    with pytest.raises(EpisodeFileError, match=message):
        read_header(path)


def test_missing_member_and_wrong_meta_length_are_named(tmp_path: Path) -> None:
    episode = tiny_episode(steps=3)
    path = tmp_path / episode_filename(0)
    arrays = episode.to_arrays()
    del arrays["rewards"]
    write_npz_atomic(path, arrays)
    with pytest.raises(EpisodeFileError, match=r"missing member\(s\) 'rewards'"):
        read_header(path)
    episode.meta = EpisodeMeta(**{**episode.meta.__dict__, "length": 7})
    save_episode(path, episode)
    with pytest.raises(EpisodeFileError, match=r"meta\.length is 7 but the file holds 3 steps"):
        read_header(path)


def test_validate_uses_the_same_schema() -> None:
    episode = tiny_episode(steps=3)
    episode.validate()
    episode.rewards = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"member 'rewards': shape \(4,\), expected \(3,\)"):
        episode.validate()


# ---- a task folder ---------------------------------------------------------------------------


def test_check_episodes_lists_checks_and_refuses_mixed_tasks(tmp_path: Path) -> None:
    with pytest.raises(EpisodeFileError, match=r"no episode_\*\.npz files; run the collect stage first"):
        check_episodes(tmp_path)
    paths = write_folder(tmp_path, count=3)
    assert [h.path for h in check_episodes(tmp_path)] == paths
    save_episode(paths[1], tiny_episode(3, 1, task="cheetah-run"))
    with pytest.raises(EpisodeFileError, match=r"episodes of several tasks \(cheetah-run, synthetic-planes\)"):
        check_episodes(tmp_path)


# ---- the stages that read episodes -----------------------------------------------------------


@pytest.mark.parametrize("stage", ["flow", "annotate"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_stages_report_a_damaged_episode_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stage: str, damage: str
) -> None:
    folder = tmp_path / "episodes" / "synthetic-planes"
    paths = write_folder(folder, count=2)
    DAMAGE[damage](paths[1])
    params_file = tmp_path / "params.yaml"
    params_file.write_text(
        yaml.safe_dump(
            {
                "flow": {"previews": 0},
                "annotate": {
                    "backend": "simulator",
                    "physics": False,
                    "every_k": 1,
                    "cache_dir": str(tmp_path / "cache"),
                },
            }
        )
    )
    metrics = tmp_path / "metrics.json"
    argv = [
        "--params",
        str(params_file),
        stage,
        "--episodes",
        str(folder),
        "--out",
        str(tmp_path / "out"),
        "--metrics",
        str(metrics),
    ]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert str(paths[1]) in err and "rerun the collect stage" in err, err
    assert "Traceback" not in err
    assert not metrics.exists()

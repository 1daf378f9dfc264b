"""Bad input to the collect stage fails before any work, naming the culprit and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from policy_fixtures import TinyActor

from models.checkpoint import save_module
from pipeline.cli import main
from pipeline.collect import (
    CameraError,
    PolicyError,
    UnknownTaskError,
    collect_task,
    collector,
    disk,
    list_tasks,
    make_env,
)
from pipeline.collect.collector import record_episode
from pipeline.collect.errors import DiskSpaceError
from pipeline.collect.policies import make_policy
from pipeline.config import ParamsError, parse_params
from pipeline.config.collect import CollectParams, PolicyParams
from pipeline.sim.episodes import save_episode


def small(**overrides) -> CollectParams:
    base = dict(
        episodes_per_task=1,
        episode_steps=4,
        image_size=16,
        depth=False,
        segmentation=False,
        workers=1,
        preview_episodes=0,
    )
    base.update(overrides)
    return CollectParams(**base)


def test_list_tasks_has_both_suites() -> None:
    tasks = list_tasks()
    for name in (
        "cheetah-run",
        "walker-walk",
        "cartpole-swingup",
        "finger-spin",
        "reacher-easy",
        "ball_in_cup-catch",
        "HalfCheetah-v5",
    ):
        assert name in tasks
    assert not any(t.endswith(("-v2", "-v3")) for t in tasks), "mujoco_py environments need another simulator"


def test_unknown_task_lists_close_matches_then_valid_tasks(tmp_path: Path) -> None:
    with pytest.raises(UnknownTaskError) as info:
        collect_task("cheetah-rn", small(), tmp_path / "out")
    message = str(info.value)
    assert "unknown task 'cheetah-rn'" in message and "Did you mean 'cheetah-run'" in message
    assert "walker-walk" in message and "HalfCheetah-v5" in message
    assert not (tmp_path / "out").exists()
    with pytest.raises(UnknownTaskError, match="halfcheetah-v5.*Did you mean 'HalfCheetah-v5'"):
        make_env("halfcheetah-v5")


def test_cli_exits_2_on_unknown_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("collect:\n  episodes_per_task: 1\n")
    assert main(["--params", str(params), "collect", "--task", "walker-wlak", "--out", str(tmp_path / "out")]) == 2
    assert main(["--params", str(params), "collect", "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("section", "culprit"),
    [
        ({"episodes_per_task": 0}, "collect.episodes_per_task = 0"),
        ({"image_size": 8}, "collect.image_size = 8"),
        ({"image_size": "big"}, "collect.image_size = 'big'"),
        ({"episode_steps": 1}, "collect.episode_steps = 1"),
        ({"action_repeat": {"cartpole-swingup": 0}}, "collect.action_repeat.cartpole-swingup = 0"),
        ({"action_repeat": 2}, "collect.action_repeat is per task: {} for every task's benchmark value"),
        ({"action_repeat": {"walker-walk": 2}}, "action_repeat names tasks not in collect.tasks: ['walker-walk']"),
        ({"camera": -2}, "collect.camera = -2"),
        ({"workers": 0}, "collect.workers = 0"),
        ({"policy": {"kind": "greedy"}}, "collect.policy.kind = 'greedy'"),
        ({"policy": {"kind": "checkpoint"}}, "needs checkpoint"),
        ({"policy": {"kind": "noisy", "noise_theta": 0}}, "collect.policy.noise_theta = 0"),
        ({"render_mode": "pretty"}, "collect.render_mode = 'pretty'"),
    ],
)
def test_bad_params_are_rejected_with_the_key_named(section: dict, culprit: str) -> None:
    with pytest.raises(ParamsError) as info:
        parse_params({"collect": section})
    assert culprit in str(info.value)


def test_unknown_camera_names_the_cameras(tmp_path: Path) -> None:
    with pytest.raises(
        CameraError, match=r"collect.camera = 7: task cheetah-run has 2 camera\(s\): 0 \('side'\), 1 \('back'\)"
    ):
        collect_task("cheetah-run", small(camera=7), tmp_path / "out")
    with pytest.raises(CameraError, match="no camera of that name"):
        make_env("cheetah-run", camera="top")
    assert not (tmp_path / "out").exists()


def save_actor(folder: Path, action_dim: int, image_size: int = 16, meta_extra: dict | None = None) -> None:
    meta = {
        "task": "cheetah-run",
        "action_dim": action_dim,
        "frame_stack": 2,
        "image_size": image_size,
        "action_repeat": 2,
    }
    meta.update(meta_extra or {})
    save_module(
        folder, TinyActor(action_dim=action_dim, frame_stack=2), {"action_dim": action_dim, "frame_stack": 2}, meta
    )


def test_checkpoint_with_the_wrong_action_size_names_both_sizes(tmp_path: Path) -> None:
    save_actor(tmp_path / "actor", action_dim=6)
    params = small(policy=PolicyParams(kind="checkpoint", checkpoint=str(tmp_path / "actor")))
    with pytest.raises(
        PolicyError, match=r"outputs 6 action dims \(trained on cheetah-run\), but task cartpole-swingup takes 1"
    ):
        collect_task("cartpole-swingup", params, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_checkpoint_with_the_wrong_image_size_or_no_checkpoint(tmp_path: Path) -> None:
    save_actor(tmp_path / "actor", action_dim=1, image_size=64)
    params = small(policy=PolicyParams(kind="checkpoint", checkpoint=str(tmp_path / "actor")))
    with pytest.raises(
        PolicyError, match="sees 64x64 frames, but collect.image_size is 16; set collect.image_size to 64"
    ):
        collect_task("cartpole-swingup", params, tmp_path / "out")
    params = small(policy=PolicyParams(kind="checkpoint", checkpoint=str(tmp_path / "missing")))
    with pytest.raises(PolicyError, match="not a checkpoint folder"):
        collect_task("cartpole-swingup", params, tmp_path / "out")
    save_module(tmp_path / "plain", torch.nn.Linear(2, 2), {"in_features": 2, "out_features": 2}, {"task": "x"})
    params = small(policy=PolicyParams(kind="checkpoint", checkpoint=str(tmp_path / "plain")))
    with pytest.raises(PolicyError, match="meta lacks action_dim, frame_stack, image_size, action_repeat"):
        collect_task("cartpole-swingup", params, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_output_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(Exception, match="exists and is not a folder"):
        collect_task("cartpole-swingup", small(), tmp_path / "out")


def _no_pool(*args: object, **kwargs: object) -> None:
    raise AssertionError("a worker pool was started")


def test_bad_input_fails_before_any_worker_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collector, "ProcessPoolExecutor", _no_pool)
    save_actor(tmp_path / "actor", action_dim=6)
    params = small(
        workers=2, episodes_per_task=2, policy=PolicyParams(kind="checkpoint", checkpoint=str(tmp_path / "actor"))
    )
    with pytest.raises(PolicyError, match="outputs 6 action dims"):
        collect_task("cartpole-swingup", params, tmp_path / "out")
    with pytest.raises(CameraError, match="collect.camera = 7"):
        collect_task("cheetah-run", small(camera=7, workers=2, episodes_per_task=2), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_disk_too_small_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(collector, "ProcessPoolExecutor", _no_pool)
    monkeypatch.setattr(disk, "free_bytes", lambda path: 20_000_000)
    huge = small(episodes_per_task=1000, episode_steps=500, image_size=84, depth=True, segmentation=True, workers=2)
    with pytest.raises(DiskSpaceError) as info:
        collect_task("cartpole-swingup", huge, tmp_path / "out")
    message = str(info.value)
    assert "1000 episode(s) x 501 frames need about" in message and "only 20.0 MB are free" in message
    assert "collect.episodes_per_task" in message and "--out" in message
    assert not (tmp_path / "out").exists()
    # The CLI exits 2 on it; a run that fits in the same space goes ahead.
    params = tmp_path / "params.yaml"
    params.write_text("collect:\n  episodes_per_task: 1000\n  episode_steps: 500\n  workers: 1\n")
    assert main(["--params", str(params), "collect", "--task", "cartpole-swingup", "--out", str(tmp_path / "out")]) == 2
    assert "need about" in capsys.readouterr().err
    (meta,) = collect_task("cartpole-swingup", small(), tmp_path / "out")
    assert meta.length == 4


def test_the_disk_estimate_is_not_below_a_real_episode_file(tmp_path: Path) -> None:
    with make_env(
        "cheetah-run", image_size=32, action_repeat=2, depth=True, segmentation=True, episode_steps=12
    ) as env:
        policy = make_policy(
            small().policy, env.action_low, env.action_high, task="cheetah-run", image_size=32, action_repeat=2
        )
        episode = record_episode(env, policy, index=0, seed=0)
        layout = disk.FrameLayout(32, True, True, env.model.nq, env.model.nv, env.model.nbody, env.action_dim)
    path = tmp_path / "episode_000000.npz"
    save_episode(path, episode)
    estimate = layout.bytes_per_frame() * len(episode.frames)
    assert path.stat().st_size <= estimate <= 20 * path.stat().st_size

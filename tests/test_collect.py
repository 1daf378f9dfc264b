"""The collect stage: schema round trip, determinism, truncation, camera truth, resuming."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.processes import assert_workers_die_with_their_parent

from pipeline.collect import collect_task, collector, make_env
from pipeline.collect.camera import project, unproject
from pipeline.collect.collector import episode_seed, record_episode
from pipeline.collect.policies import make_policy
from pipeline.collect.run import run as run_collect
from pipeline.config.collect import CollectParams
from pipeline.sim.episodes import Episode, list_episodes, load_episode, save_episode


def load_index_metas(folder: Path) -> list:
    return [load_episode(p).meta for p in list_episodes(folder)]


def small(**overrides) -> CollectParams:
    base = dict(
        tasks=["cartpole-swingup"],
        episodes_per_task=2,
        episode_steps=12,
        action_repeat={"cartpole-swingup": 2},
        image_size=32,
        workers=1,
        preview_episodes=1,
    )
    base.update(overrides)
    return CollectParams(**base)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_episode_schema_round_trip(tmp_path: Path) -> None:
    params = small()
    with make_env(
        "cartpole-swingup", image_size=32, action_repeat=2, depth=True, segmentation=True, episode_steps=12
    ) as env:
        policy = make_policy(
            params.policy, env.action_low, env.action_high, task="cartpole-swingup", image_size=32, action_repeat=2
        )
        episode = record_episode(env, policy, index=3, seed=7)
        nq, nv, nbody, ngeom = env.model.nq, env.model.nv, env.model.nbody, env.model.ngeom
    assert episode.frames.shape == (13, 32, 32, 3) and episode.frames.dtype == np.uint8
    assert episode.actions.shape == (12, 1) and episode.qpos.shape == (13, nq) and episode.qvel.shape == (13, nv)
    assert episode.body_pos.shape == (13, nbody, 3) and episode.body_quat.shape == (13, nbody, 4)
    assert episode.depth.shape == (13, 32, 32) and episode.segmentation.shape == (13, 32, 32)
    assert episode.geom_body.shape == (ngeom,)
    assert len(episode.meta.body_names) == nbody and len(episode.meta.geom_names) == ngeom
    assert (episode.frames[-1] != episode.frames[0]).any(), "the cart should move"
    path = tmp_path / "episode_000003.npz"
    save_episode(path, episode)
    loaded = load_episode(path)
    assert loaded.meta == episode.meta
    for name, value in episode.to_arrays().items():
        if name != "meta":
            np.testing.assert_array_equal(getattr(loaded, name), value, err_msg=name)
            assert getattr(loaded, name).dtype == value.dtype, name
    # Stored actions are inside the box and recorded in env units.
    assert np.all(loaded.actions >= np.array(loaded.meta.action_low, np.float32))
    assert np.all(loaded.actions <= np.array(loaded.meta.action_high, np.float32))


def test_each_task_collects_at_its_benchmark_action_repeat_unless_overridden(tmp_path: Path) -> None:
    """collect.action_repeat {}: cartpole at 8 and cheetah at 4 (PlaNet/DrQ); an override changes only its task."""
    tiny = dict(
        tasks=["cartpole-swingup", "cheetah-run"],
        episodes_per_task=1,
        episode_steps=3,
        image_size=16,
        depth=False,
        segmentation=False,
        workers=1,
        preview_episodes=0,
    )
    default = CollectParams(**tiny)
    summary = run_collect("cartpole-swingup", tmp_path / "cartpole", default)
    episode = load_episode(tmp_path / "cartpole" / "episode_000000.npz")
    assert summary.action_repeat == 8 and episode.meta.action_repeat == 8
    assert episode.meta.control_timestep == pytest.approx(8 * 0.01)  # cartpole's physics step is 10 ms
    assert run_collect("cheetah-run", tmp_path / "cheetah", default).action_repeat == 4
    cheetah_file = tmp_path / "cheetah" / "episode_000000.npz"
    recorded = cheetah_file.stat().st_ino

    override = CollectParams(**tiny, action_repeat={"cartpole-swingup": 3})
    assert run_collect("cartpole-swingup", tmp_path / "cartpole", override).action_repeat == 3
    rerecorded = load_episode(tmp_path / "cartpole" / "episode_000000.npz")
    assert rerecorded.meta.action_repeat == 3 and rerecorded.meta.control_timestep == pytest.approx(0.03)
    assert not np.array_equal(rerecorded.qpos[1:], episode.qpos[1:])  # same seed, other frame gap
    assert run_collect("cheetah-run", tmp_path / "cheetah", override).action_repeat == 4
    assert cheetah_file.stat().st_ino == recorded  # another task's override leaves its episodes as they were


def test_same_params_same_bytes_for_any_worker_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    previews: list[str] = []
    write_preview = collector._write_preview
    monkeypatch.setattr(
        collector, "_write_preview", lambda out, *a: (previews.append(Path(out).name), write_preview(out, *a))
    )
    params = small()
    one = collect_task("cartpole-swingup", params, tmp_path / "one", workers=1)  # in this process
    # This process and a spawned worker (3 asked, 2 used: one per episode at most).
    pool = collect_task("cartpole-swingup", params, tmp_path / "pool", workers=3)
    assert one == pool
    files = folder_bytes(tmp_path / "one")
    assert sorted(files) == ["episode_000000.npz", "episode_000001.npz", "index.json", "preview.gif"]
    assert files == folder_bytes(tmp_path / "pool")
    # More episodes than workers: the worker records from the first, this process from the last,
    # and writes the preview once the episodes it shows are done (while the pool finishes, or after).
    many = small(episodes_per_task=4, preview_episodes=2, depth=False, segmentation=False)
    assert collect_task("cartpole-swingup", many, tmp_path / "one4", workers=1) == collect_task(
        "cartpole-swingup", many, tmp_path / "pool4", workers=2
    )
    assert folder_bytes(tmp_path / "one4") == folder_bytes(tmp_path / "pool4")
    assert previews == ["one", "pool", "one4", "pool4"]  # once per run
    # Different episodes really differ, and the index says what each file holds.
    a, b = (load_episode(p) for p in list_episodes(tmp_path / "one"))
    assert a.meta.seed == episode_seed(0, "cartpole-swingup", 0) != b.meta.seed
    assert not np.array_equal(a.qpos[0], b.qpos[0])
    index = json.loads(files["index.json"])
    assert [row["file"] for row in index["episodes"]] == ["episode_000000.npz", "episode_000001.npz"]
    assert index["episodes"][1]["seed"] == b.meta.seed and index["episodes"][1]["length"] == 12
    assert index["episodes"][0]["policy"] == "noisy" and index["episodes"][0]["task"] == "cartpole-swingup"
    # Another base seed gives other episodes.
    other = collect_task("cartpole-swingup", small(seed=1, episodes_per_task=1, preview_episodes=0), tmp_path / "other")
    assert other[0].seed != one[0].seed
    assert not (tmp_path / "other" / "preview.gif").exists()


def test_rerun_keeps_finished_episodes_and_redoes_changed_ones(tmp_path: Path) -> None:
    out = tmp_path / "eps"
    params = small(episodes_per_task=3, depth=False, segmentation=False, preview_episodes=0)
    collect_task("cartpole-swingup", params, out)
    reference = folder_bytes(out)
    first = out / "episode_000000.npz"
    stamp = first.stat().st_mtime_ns
    (out / "episode_000001.npz").unlink()  # lost
    (out / "episode_000002.npz").write_bytes(reference["episode_000002.npz"][:500])  # corrupt
    (out / ".episode_000003.npz.x1y2.tmp").write_bytes(b"half")  # a killed write
    collect_task("cartpole-swingup", params, out)
    assert first.stat().st_mtime_ns == stamp, "a finished episode was recorded again"
    assert folder_bytes(out) == reference
    # Fewer episodes: extra files go. Other content params: everything is recorded again.
    collect_task("cartpole-swingup", params.model_copy(update={"episodes_per_task": 1}), out)
    assert sorted(p.name for p in out.iterdir()) == ["episode_000000.npz", "index.json"]
    collect_task("cartpole-swingup", params.model_copy(update={"episodes_per_task": 1, "image_size": 24}), out)
    assert load_episode(first).frames.shape[1:] == (24, 24, 3)


def test_preview_is_written_while_the_pool_records_its_last_episodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the shown episodes already on disk, this process writes the preview as soon as it has
    no episode left to take, before the run's new index: the same bytes as a one-process run."""
    indexed: list[int] = []
    write_preview = collector._write_preview

    def spy(out: Path, *args: object) -> None:
        indexed.append(len(json.loads((Path(out) / "index.json").read_text())["episodes"]))
        write_preview(out, *args)

    params = small(episodes_per_task=2, preview_episodes=1, depth=False, segmentation=False)
    collect_task("cartpole-swingup", params, tmp_path / "pool", workers=1)
    monkeypatch.setattr(collector, "_write_preview", spy)
    more = params.model_copy(update={"episodes_per_task": 4})
    collect_task("cartpole-swingup", more, tmp_path / "pool", workers=2)  # keeps 0 and 1, records 2 and 3
    assert indexed == [2], "the preview waited for the end of the run"
    monkeypatch.undo()
    collect_task("cartpole-swingup", more, tmp_path / "one", workers=1)
    assert folder_bytes(tmp_path / "pool") == folder_bytes(tmp_path / "one")


def test_time_limit_is_truncation_not_termination(tmp_path: Path) -> None:
    params = small(episode_steps=5, depth=False, segmentation=False, preview_episodes=0, episodes_per_task=1)
    summary = run_collect("cartpole-swingup", tmp_path, params)
    (meta,) = load_index_metas(tmp_path)
    assert (summary.stage, summary.task, summary.episodes, summary.frames, summary.terminated) == (
        "collect",
        "cartpole-swingup",
        1,
        6,
        0,
    )
    assert summary.mean_return == pytest.approx(meta.episode_return)
    assert summary.line().startswith("collect cartpole-swingup: 1 episodes, 6 frames")
    assert (
        set(summary.metrics()) == {"task", "action_repeat", "episodes", "frames", "mean_return", "terminated"}
        and summary.action_repeat == 2
    )
    episode = load_episode(tmp_path / "episode_000000.npz")
    assert meta.length == 5 and meta.truncated and not meta.terminated
    assert episode.truncated.tolist() == [False, False, False, False, True]
    assert not episode.terminated.any()
    assert np.all(episode.discounts == 1.0)


def test_true_terminal_is_termination_not_truncation() -> None:
    # An unhealthy Hopper terminates (gymnasium's `terminated`); random actions get there fast.
    with make_env("Hopper-v5", image_size=16, action_repeat=4, episode_steps=200, seed=0) as env:
        rng = np.random.default_rng(0)
        result = env.reset(seed=0)
        steps = 0
        while not result.done:
            result = env.step(rng.uniform(env.action_low, env.action_high).astype(np.float32))
            steps += 1
        assert result.terminated and not result.truncated and result.discount == 0.0
        assert steps < 200
        with pytest.raises(RuntimeError, match="reset"):
            env.step(np.zeros(env.action_low.shape, np.float32))


def _check_sphere_reprojection(episode: Episode, geom: int, radius: float) -> None:
    """Project the sphere's body position into every frame: it lands on the pixels segmentation
    labels as that geom, and depth there unprojects onto the sphere's surface."""
    body = int(episode.geom_body[geom])
    checked = 0
    for t in range(episode.frames.shape[0]):
        mask = episode.segmentation[t] == geom
        if mask.sum() < 4:
            continue
        extrinsics, intrinsics = episode.camera_extrinsics[t], episode.camera_intrinsics
        centre = episode.body_pos[t, body]
        (u, v), z = project(centre, extrinsics, intrinsics)
        rows, cols = np.nonzero(mask)
        assert np.hypot(cols.mean() - u, rows.mean() - v) < 1.5, (t, (u, v), (cols.mean(), rows.mean()))
        assert mask[int(round(v)), int(round(u))], "the projected centre is not on the sphere's pixels"
        assert z > 0 and abs(episode.depth[t][int(round(v)), int(round(u))] - (z - radius)) < 0.25 * radius + 2e-3
        surface = unproject(episode.depth[t], extrinsics, intrinsics, np.stack([cols, rows], axis=1))
        distance = np.linalg.norm(surface - centre, axis=1)
        np.testing.assert_allclose(distance, radius, atol=0.05 * radius + 1e-3)
        checked += 1
    assert checked >= 3, "the sphere was visible in too few frames to check anything"


def test_camera_pose_and_depth_reproject_onto_segmentation(tmp_path: Path) -> None:
    # dm_control, a model camera: the ball of ball_in_cup.
    params = small(episode_steps=10, image_size=48, episodes_per_task=1, preview_episodes=0)
    collect_task("ball_in_cup-catch", params, tmp_path / "cup")
    episode = load_episode(tmp_path / "cup" / "episode_000000.npz")
    ball = episode.meta.geom_names.index("ball")
    assert episode.meta.extra["camera_name"] == "cam0"
    _check_sphere_reprojection(episode, ball, radius=0.025)


def test_free_camera_pose_and_depth_match_the_scene() -> None:
    # gymnasium Reacher has no model camera: its default free camera, posed from the OpenGL camera.
    with make_env("Reacher-v5", image_size=48, depth=True, segmentation=True, episode_steps=6, seed=3) as env:
        assert env.camera_name == "free"
        ground = env.geom_names.index("ground")
        rng = np.random.default_rng(0)
        result = env.reset(seed=3)
        for _ in range(3):
            K, pose, seg = result.camera_intrinsics, result.camera_extrinsics, result.segmentation
            points = unproject(result.depth, pose, K)
            # Every pixel of the ground plane unprojects onto the plane.
            plane_z = env.data.geom_xpos[ground][2]
            np.testing.assert_allclose(points[seg == ground][:, 2], plane_z, atol=2e-3)
            # Every pixel of another geom unprojects inside that geom's bounding sphere.
            for geom in set(np.unique(seg).tolist()) - {-1, ground}:
                distance = np.linalg.norm(points[seg == geom] - env.data.geom_xpos[geom], axis=1)
                assert distance.max() < env.model.geom_rbound[geom] + 2e-3, env.geom_names[geom]
                uv, _ = project(env.data.geom_xpos[geom], pose, K)
                assert 0 <= uv[0] < 48 and 0 <= uv[1] < 48
            result = env.step(rng.uniform(env.action_low, env.action_high).astype(np.float32))


def test_gymnasium_half_cheetah_episode(tmp_path: Path) -> None:
    params = small(episode_steps=6, image_size=32, episodes_per_task=1, preview_episodes=1)
    (meta,) = collect_task("HalfCheetah-v5", params, tmp_path)
    episode = load_episode(tmp_path / "episode_000000.npz")
    assert meta.suite == "gymnasium" and meta.length == 6 and meta.truncated
    assert meta.extra["camera_name"] == "track"  # the model's tracking camera
    assert meta.control_timestep == pytest.approx(0.05 * 2)  # frame_skip 5 x 0.01 s x action repeat
    assert episode.actions.shape == (6, 6) and episode.qpos.shape == (7, 9)
    assert np.isfinite(episode.rewards).all() and episode.rewards.std() > 0
    assert (episode.segmentation >= 0).any() and (tmp_path / "preview.gif").stat().st_size > 0


def test_fast_mode_changes_pixels_only() -> None:
    frames = {}
    for mode in ("fast", "faithful"):
        with make_env("cheetah-run", image_size=32, render_mode=mode, depth=True, segmentation=True, seed=1) as env:
            frames[mode] = env.reset(seed=1)
    fast, faithful = frames["fast"], frames["faithful"]
    assert not np.array_equal(fast.frame, faithful.frame)
    np.testing.assert_array_equal(fast.segmentation, faithful.segmentation)
    np.testing.assert_array_equal(fast.depth, faithful.depth)
    # Skybox off: background pixels are black in fast mode only (but for anti-aliased edges).
    background = fast.segmentation < 0
    assert background.sum() > 100
    assert (fast.frame[background].max(axis=1) == 0).mean() > 0.9
    assert (faithful.frame[background].max(axis=1) > 0).all()


def test_env_api_reset_seed_and_action_checks() -> None:
    with make_env("cartpole-swingup", image_size=16, episode_steps=3, action_repeat=3) as env:
        assert env.action_low.dtype == np.float32 and env.action_low.shape == (1,)
        a = env.reset(seed=5)
        b = env.reset(seed=5)
        c = env.reset(seed=6)
        np.testing.assert_array_equal(a.qpos, b.qpos)
        assert not np.array_equal(a.qpos, c.qpos)
        with pytest.raises(ValueError, match="shape"):
            env.step(np.zeros(2, np.float32))
        result = env.step(np.ones(1, np.float32))
        assert result.frame.shape == (16, 16, 3) and result.depth is None and result.segmentation is None
        assert env.control_timestep == pytest.approx(0.01 * 3)


def test_scene_renderer_matches_mujoco_renderer() -> None:
    """Our one-pass depth + segmentation equals mujoco.Renderer's separate passes, pixel for pixel."""
    import mujoco

    from pipeline.collect.render import FAST_MODE_OFF

    with make_env("finger-spin", image_size=40, depth=True, segmentation=True, seed=2) as env:
        ours = env.reset(seed=2)
        reference = mujoco.Renderer(env.model, 40, 40)
        try:
            for flag in FAST_MODE_OFF:
                reference.scene.flags[flag] = 0
            reference.update_scene(env.data, camera=0)
            rgb = reference.render()
            reference.enable_depth_rendering()
            depth = reference.render()
            reference.disable_depth_rendering()
            reference.enable_segmentation_rendering()
            ids = reference.render()
        finally:
            reference.close()
    np.testing.assert_array_equal(ours.frame, rgb)
    np.testing.assert_array_equal(ours.depth, depth)
    np.testing.assert_array_equal(
        ours.segmentation, np.where(ids[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM), ids[..., 0], -1)
    )
    assert len(np.unique(ours.segmentation)) > 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_the_main_process_leaves_no_worker_running(tmp_path: Path) -> None:
    """SIGKILL on `semore collect` mid-run (workers: 3, so 2 spawned beside the main process): its
    workers (mid-episode, episodes far longer than the wait below) must end within seconds instead
    of finishing their episodes."""
    params = tmp_path / "params.yaml"
    params.write_text(
        "collect:\n  episodes_per_task: 4\n  episode_steps: 20000\n  image_size: 16\n  depth: false\n"
        "  segmentation: false\n  workers: 3\n  preview_episodes: 0\n"
    )
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "--params",
        str(params),
        "collect",
        "--task",
        "cartpole-swingup",
        "--out",
        str(tmp_path / "out"),
    ]
    assert_workers_die_with_their_parent(command, workers=2)


def test_importing_collect_has_no_side_effect_and_make_env_sets_up_rendering_itself() -> None:
    """Importing the package neither sets MUJOCO_GL nor imports mujoco (nor, for spawned workers'
    start-up, the params package); make_env alone, without the CLI, sets up headless rendering."""
    code = (
        "import os, sys\n"
        "import pipeline.collect, pipeline.collect.collector, pipeline.collect.policies\n"
        "assert 'MUJOCO_GL' not in os.environ, 'import set MUJOCO_GL'\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('mujoco', 'dm_control', 'gymnasium', 'pydantic', 'tqdm') or m.startswith('pipeline.config'))\n"
        "assert not leaked, leaked\n"
        "env = pipeline.collect.make_env('cartpole-swingup', image_size=16)\n"
        "assert env.reset().frame.shape == (16, 16, 3)\n"
        "env.close()\n"
        "print(os.environ['MUJOCO_GL'])\n"
    )
    environ = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=environ,
        cwd=Path(__file__).resolve().parents[1],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "egl"

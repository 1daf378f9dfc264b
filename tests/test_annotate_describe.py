"""The simulator annotator's words (pipeline/annotate/describe.py) and how much of the state they carry
(information.py)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from support.annotate import annotate, collect_episodes, scene_at_state

from pipeline.annotate.describe import (
    COMPASS,
    POLE_BANDS_DEG,
    compass_words,
    describe_frame,
    describe_generic,
    describer_for,
    part_name,
    pole_words,
)
from pipeline.annotate.information import entropy_bits, text_information
from pipeline.annotate.simulator import MODEL_NAME, PhysicsReader, describe
from pipeline.annotate.truth import body_angular_velocities, scene_truths
from pipeline.config import parse_params
from pipeline.sim.episodes import list_episodes, load_episode
from pipeline.sim.joint_state import Joint, state_matrix
from pipeline.sim.task_physics import load_task_physics


@pytest.fixture(scope="module")
def cartpole(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three noisy-policy cart-pole episodes (three: the probe's fewest)."""
    return collect_episodes(tmp_path_factory.mktemp("cartpole") / "episodes", episodes=3, steps=40)


@pytest.fixture(scope="module")
def cheetah(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return collect_episodes(tmp_path_factory.mktemp("cheetah") / "episodes", task="cheetah-run", episodes=1, steps=60)


@pytest.fixture(scope="module")
def reader():
    r = PhysicsReader()
    yield r
    r.close()


def first_scene(folder: Path):
    return scene_truths(load_episode(list_episodes(folder)[0]), [0], 4)[0]


def run_stage(episodes: Path, tmp: Path, **annotate_params: object) -> dict:
    """Annotate every frame; the metrics file's contents."""
    params = parse_params({"annotate": {"every_k": 1, "cache_dir": str(tmp / "cache"), **annotate_params}})
    annotate(episodes, tmp / "out", tmp / "metrics.json", params)
    return json.loads((tmp / "metrics.json").read_text())


def captions(out: Path) -> list[str]:
    return [
        r["annotation"]["caption"] for f in sorted(out.glob("*.json")) for r in json.loads(f.read_text())["records"]
    ]


# -- many captions on a short noisy episode ------------------------------------------------------------
@pytest.mark.parametrize("task", ["cartpole", "cheetah"])
def test_short_noisy_episodes_get_many_distinct_captions(
    task: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    metrics = run_stage(request.getfixturevalue(task), tmp_path)
    texts = captions(tmp_path / "out")
    assert len(set(texts)) >= 8, sorted(set(texts))  # v1 said 3 (cheetah) or 4 (cart-pole) things in all
    info = metrics["text_information"]
    assert info["caption"]["distinct"] == len(set(texts)) and info["frames"] == len(texts)
    assert info["caption"]["entropy_bits"] > 2.0  # worth more than the 4 equally likely captions v1 had at most
    doc = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert doc["model"] == MODEL_NAME == "mujoco-truth-v2"  # a new model id: annotations cached from v1 are not reused


# -- words change where the state crosses a bucket boundary --------------------------------------------------
def test_cartpole_words_follow_the_state(cartpole: Path, reader: PhysicsReader) -> None:
    scene = first_scene(cartpole)

    def words(hinge: float, hinge_speed: float = 0.0, slider: float = 0.0, cart_speed: float = 0.0) -> str:
        moved, physics = scene_at_state(scene, [slider, hinge], [cart_speed, hinge_speed], reader)
        return describe(moved, physics).caption

    upright, down = words(0.0), words(math.pi)
    assert upright.startswith("The pole is upright") and down.startswith("The pole is hanging straight down")
    # A positive hinge angle turns the pole's tip towards world +x (axis 0 1 0), which this camera
    # (looking along +y) shows on the right; the two sides of a band edge get different words.
    edge = math.radians(POLE_BANDS_DEG[0])
    assert "upright" in words(edge - 0.02) and "tilted a little to the right" in words(edge + 0.02)
    assert "tilted a little to the left" in words(-edge - 0.02)
    assert "tilted a lot to the right" in words(math.radians(50)) and "horizontal, pointing left" in words(-math.pi / 2)
    assert "hanging down, a little to the left" in words(-math.radians(160))
    # Upright and swinging with +hinge velocity: the tip moves right, clockwise as seen;
    # faster past FAST_SPIN (2 rad/s).
    assert "swinging slowly clockwise" in words(0.0, 1.0) and "swinging fast counter-clockwise" in words(0.0, -3.0)
    assert "not swinging" in words(0.0, 0.1)
    # The cart: across the frame (4 m away, 45 degree view: 1 m is ~30% of the width), and its motion.
    assert "the cart is in the middle, still" in words(0.0)
    assert "the cart is right of the middle, moving slowly to the right" in words(0.0, slider=0.5, cart_speed=0.3)
    assert "the cart is far to the left, moving fast to the left" in words(0.0, slider=-1.2, cart_speed=-1.0)


def test_cheetah_words_follow_the_state(cheetah: Path, reader: PhysicsReader) -> None:
    import mujoco

    scene = first_scene(cheetah)
    nq = scene.qpos.size

    def annotation(rootz: float = -0.15, rooty: float = 0.0, speed: float = 0.0):  # -0.15: both feet just on the ground
        qpos, qvel = np.zeros(nq), np.zeros(nq)
        qpos[1], qpos[2], qvel[0] = rootz, rooty, speed
        moved, physics = scene_at_state(scene, qpos, qvel, reader)
        return describe(moved, physics)

    standing = annotation()
    assert standing.caption == "The cheetah is level, standing still, with both feet on the ground."
    assert next(o.description for o in standing.objects if o.name == "bfoot").startswith("on the ground")
    assert "both feet in the air" in annotation(rootz=0.5).caption
    # rooty turns about world +y: a positive angle lowers the head (the torso's +x end).
    model, data, close = load_task_physics("cheetah-run")
    data.qpos[2] = 0.3
    mujoco.mj_forward(model, data)
    head_lower = data.geom_xpos[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "head")][2] < data.xpos[1][2]
    close()
    assert head_lower
    assert "tilted nose down a little" in annotation(rootz=0.5, rooty=0.3).caption
    assert "rearing up, nose high" in annotation(rootz=0.5, rooty=-1.0).caption
    assert "flipped over" in annotation(rootz=0.5, rooty=math.pi).caption
    assert "running forward" in annotation(speed=3.0).caption and "moving backwards" in annotation(speed=-1.0).caption
    assert (
        "standing still" in annotation(speed=0.1).caption and "moving slowly forward" in annotation(speed=1.0).caption
    )


def test_without_physics_the_words_come_from_the_episode(cartpole: Path, tmp_path: Path) -> None:
    """physics: false: no contacts, but angles and swings from body_quat and its finite differences."""
    episode = load_episode(list_episodes(cartpole)[0])
    scenes = scene_truths(episode, list(range(episode.length + 1)), 4)
    reader = PhysicsReader()
    try:
        exact = [describe(s, reader.read(s)).caption for s in scenes.values()]
    finally:
        reader.close()
    loose = [describe(s, None).caption for s in scenes.values()]
    # Velocities differ (finite differences vs exact) near bucket edges, the pole's angle words never do.
    assert [c.split(" and ")[0] for c in loose] == [c.split(" and ")[0] for c in exact]
    assert sum(a == b for a, b in zip(loose, exact, strict=True)) >= 0.7 * len(exact)


def test_angular_velocity_from_orientations_is_exact_for_a_steady_spin() -> None:
    dt, rate = 0.05, np.array([0.0, 2.0, -1.0])  # rad/s about a fixed world axis
    angle = np.linalg.norm(rate) * dt * np.arange(6)
    axis = rate / np.linalg.norm(rate)
    quat = np.concatenate([np.cos(angle / 2)[:, None], np.sin(angle / 2)[:, None] * axis], axis=1)
    quat[3] *= -1  # q and -q are the same orientation
    spin = body_angular_velocities(quat[:, None, :], dt)
    np.testing.assert_allclose(spin[:, 0], np.tile(rate, (6, 1)), atol=1e-9)
    assert body_angular_velocities(quat[:1, None, :], dt).shape == (1, 1, 3)


def test_other_tasks_get_the_generic_words(cartpole: Path, reader: PhysicsReader) -> None:
    scene = first_scene(cartpole)
    frame, words = describe_frame(dataclasses.replace(scene, task="mystery-task"), reader.read(scene))
    assert words.caption.startswith("A mystery-task frame: the cart is ")
    assert (
        describer_for("cartpole-swingup", "dm_control", {"cart": 1}) is describe_generic
    )  # no pole: no cart-pole words
    assert describer_for("HalfCheetah-v5", "gymnasium", frame.bodies) is describe_generic


def test_word_helpers() -> None:
    assert (
        pole_words(0.0) == "upright"
        and pole_words(180.0) == "hanging straight down"
        and pole_words(-90.0) == "horizontal, pointing left"
    )
    assert [compass_words(a) for a in (0, 22, 23, 180, -90, 359)] == [
        "up",
        "up",
        "up and to the right",
        "down",
        "left",
        "up",
    ]
    assert len(set(compass_words(a) for a in range(0, 360, 45))) == len(COMPASS)
    assert (
        part_name("bthigh") == "back thigh"
        and part_name("right_foot") == "right foot"
        and part_name("floor") == "floor"
    )


# -- informativeness --------------------------------------------------------------------------------------
def test_state_matrix_drops_the_untracked_root_and_splits_angles() -> None:
    joints = [Joint("rootx", 2, 0, 0), Joint("rootz", 2, 1, 1), Joint("hinge", 3, 2, 2)]
    qpos = np.array([[5.0, 0.1, math.pi / 2]])
    state, kinds = state_matrix(joints, qpos, np.array([[1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(state, [[0.1, 0.0, 1.0, 1.0, 2.0, 3.0]], atol=1e-12)
    assert kinds == ["position"] * 3 + ["velocity"] * 3


def test_entropy_bits() -> None:
    assert entropy_bits(list("abcd")) == pytest.approx(2.0) and entropy_bits(["x"] * 5) == pytest.approx(0.0)


def test_captions_carry_more_of_the_state_than_a_constant_caption(cartpole: Path, tmp_path: Path) -> None:
    metrics = run_stage(cartpole, tmp_path)
    info = metrics["text_information"]
    assert info["episodes"] == 3 and info["state_dims"] == 5  # cart x, cos/sin of the hinge, 2 velocities
    assert info["caption"]["probe_r2"] > 0.2 and info["objects"]["probe_r2"] > 0.2
    # The same frames and states with one caption for all (what a near-constant caption gives): nothing to read.
    from pipeline.sim.joint_state import model_joints

    qpos, qvel, episode = [], [], []
    for i, path in enumerate(list_episodes(cartpole)):
        e = load_episode(path)
        qpos.append(e.qpos)
        qvel.append(e.qvel)
        episode += [i] * len(e.qpos)
    state, kinds = state_matrix(model_joints("cartpole-swingup"), np.concatenate(qpos), np.concatenate(qvel))
    constant = text_information(
        {"caption": ["A cartpole-swingup frame with 2 bodies in view."] * len(episode)}, np.array(episode), state, kinds
    )
    assert constant["caption"]["distinct"] == 1 and constant["caption"]["probe_r2"] < 0.02
    assert info["caption"]["probe_r2"] > constant["caption"]["probe_r2"] + 0.2
    # Fewer than 3 episodes: no probe, counts still.
    few = text_information({"caption": ["a", "b"]}, np.array([0, 1]), np.array([[0.0], [1.0]]), ["position"])
    assert few["caption"] == {
        "distinct": 2,
        "entropy_bits": 1.0,
        "probe_r2": None,
        "probe_r2_position": None,
        "probe_r2_velocity": None,
    }


def test_a_prefetched_model_is_compiled_once_and_a_failed_compile_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """prefetch_task_physics compiles on a thread; load_task_physics waits for that compile instead
    of starting its own, and a compile that failed is not kept: the next call compiles again."""
    import threading
    import time

    from pipeline.sim import task_physics

    task_physics.clear_model_cache()
    compiled: list[str] = []
    compile_task = task_physics._compile_task
    started = threading.Event()

    def slow_compile(task: str, suite: str):  # type: ignore[no-untyped-def]
        compiled.append(task)
        started.set()
        time.sleep(0.2)  # long enough for the call below to arrive while this one compiles
        return compile_task(task, suite)

    monkeypatch.setattr(task_physics, "_compile_task", slow_compile)
    task_physics.prefetch_task_physics("cartpole-swingup", "dm_control")
    assert started.wait(10)
    model, data, _ = load_task_physics("cartpole-swingup", "dm_control")
    again, _, _ = load_task_physics("cartpole-swingup", "dm_control")
    assert compiled == ["cartpole-swingup"] and again is model and data.qpos.shape == (model.nq,)

    def broken(task: str, suite: str):  # type: ignore[no-untyped-def]
        compiled.append(task)
        raise RuntimeError("compiler crashed")

    monkeypatch.setattr(task_physics, "_compile_task", broken)
    task_physics.prefetch_task_physics("cheetah-run", "dm_control")  # fails quietly on its thread
    with pytest.raises(RuntimeError, match="compiler crashed"):
        load_task_physics("cheetah-run", "dm_control")
    monkeypatch.setattr(task_physics, "_compile_task", compile_task)
    assert load_task_physics("cheetah-run", "dm_control")[0].nq == 9
    task_physics.clear_model_cache()

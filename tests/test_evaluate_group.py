"""Lockstepped vector runs (pipeline.evaluate.group): a group of one is today's run, a member's result does not
depend on the group it ran in, and members sharing a frozen backbone share its forward."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from models.backbone import DualPathBackbone
from pipeline.collect import make_env
from pipeline.config.evaluate import AgentParams
from pipeline.evaluate.group import GroupWorkspace, Member
from pipeline.evaluate.workspace import FeatureObserver, Schedule, StateObserver, VectorWorkspace

TASK = "cartpole-swingup"
AGENT = AgentParams(batch_size=16, hidden_dim=32)
# action repeat 8, 10-step episodes: training episodes of 80 frames, evaluations at 0, 160 and 240 frames
SCHEDULE = Schedule(
    frames=240, seed_frames=80, eval_every_frames=160, eval_episodes=2, episode_frames=80, action_repeat=8
)
CPU = torch.device("cpu")


def env_factory(image_size: int = 24):
    return partial(lambda seed: make_env(TASK, image_size=image_size, action_repeat=8, episode_steps=10, seed=seed))


def solo(seed: int, observer) -> list[dict[str, float]]:
    ws = VectorWorkspace(TASK, env_factory(), observer, AGENT, SCHEDULE, seed, CPU)
    try:
        return ws.train().curve
    finally:
        ws.close()


def grouped(members: list[Member]) -> list[list[dict[str, float]]]:
    ws = GroupWorkspace(TASK, env_factory(), members, AGENT, SCHEDULE, CPU)
    try:
        return [r.curve for r in ws.train()]
    finally:
        ws.close()


def assert_same_curve(got: list[dict[str, float]], want: list[dict[str, float]]) -> None:
    assert [e["frames"] for e in got] == [e["frames"] for e in want] == [0, 160, 240]
    for a, b in zip(got, want, strict=True):
        assert a["return_mean"] == pytest.approx(b["return_mean"], rel=1e-4, abs=1e-4)
        assert a["return_std"] == pytest.approx(b["return_std"], rel=1e-4, abs=1e-4)


def test_a_group_of_one_is_the_run_it_replaces(torch_one_thread) -> None:
    state = partial(StateObserver, 5)
    (curve,) = grouped([Member(3, state, "state seed 3")])
    assert_same_curve(curve, solo(3, state))
    assert curve[-1]["return_mean"] != curve[0]["return_mean"]  # the agent trained: not a trivially equal pair


def test_a_members_result_does_not_depend_on_its_group(torch_one_thread) -> None:
    state = partial(StateObserver, 5)
    curves = grouped([Member(s, state, f"state seed {s}") for s in (3, 4, 5)])
    assert_same_curve(curves[1], solo(4, state))
    assert curves[0] != curves[1]  # their own seeds: different runs


def test_members_of_one_frozen_backbone_share_its_forward(torch_one_thread) -> None:
    torch.manual_seed(0)
    net = DualPathBackbone(frame_stack=2, image_size=24, feature_dim=8, channels=4, depth=2).eval()
    calls: list[int] = []

    class CountingBackbone:
        """The frozen-backbone interface FeatureObserver reads, counting forwards."""

        spec = type("Spec", (), {"frame_stack": 2})()
        feature_dim = 8

        @staticmethod
        def features(stacks: np.ndarray, batch: int) -> np.ndarray:
            calls.append(len(stacks))
            with torch.no_grad():
                return net(torch.as_tensor(stacks)).numpy()

    backbone = CountingBackbone()
    observer = partial(FeatureObserver, backbone)
    members = [Member(s, observer, f"frozen seed {s}") for s in (1, 2, 3)]
    ws = GroupWorkspace(TASK, env_factory(), members, AGENT, SCHEDULE, CPU)
    try:
        raw = [ws._reset(i) for i in range(3)]
        calls.clear()
        vectors = ws.encode(ws.observers, raw)
    finally:
        ws.close()
    assert calls == [3] and vectors.shape == (3, 8)
    for i in range(3):  # the batched forward is each member's own
        np.testing.assert_allclose(vectors[i], backbone.features(raw[i][None], 1)[0], rtol=1e-5, atol=1e-6)

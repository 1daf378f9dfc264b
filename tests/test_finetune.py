"""Finetune stage, unit level: SAC targets and gradients, the target network, the replay buffer, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.actor import Actor, PixelPolicy
from models.backbone import DualPathBackbone
from pipeline.collect.envs.wrappers import FrameStacker
from pipeline.config.finetune import FinetuneParams
from pipeline.finetune.augment import random_shift
from pipeline.finetune.replay_buffer import ReplayBuffer
from pipeline.finetune.sac import SAC

BACKBONE = dict(frame_stack=3, image_size=16, feature_dim=8, channels=4, depth=2)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def make_agent(action_dim: int = 2, train_encoder: bool = True, **overrides) -> SAC:
    params = FinetuneParams(hidden_dim=16, batch_size=4, device="cpu", **overrides)
    return SAC(DualPathBackbone(**BACKBONE), action_dim, params, torch.device("cpu"), train_encoder=train_encoder)


def make_batch(agent: SAC, b: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (b, 3 * BACKBONE["frame_stack"], BACKBONE["image_size"], BACKBONE["image_size"])
    return {
        "obs": rng.integers(0, 256, shape, dtype=np.uint8),
        "next_obs": rng.integers(0, 256, shape, dtype=np.uint8),
        "action": rng.uniform(-1, 1, (b, agent.action_dim)).astype(np.float32),
        "reward": rng.uniform(0, 1, b).astype(np.float32),
        "discount": np.full(b, 0.99, np.float32),
        "terminated": np.zeros(b, np.float32),
    }


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


# --- SAC -------------------------------------------------------------------------------------
def test_termination_stops_the_bootstrap_and_truncation_does_not() -> None:
    agent = make_agent()
    features = torch.randn(5, BACKBONE["feature_dim"])
    reward = torch.rand(5, 1)
    discount = torch.full((5, 1), 0.9)

    torch.manual_seed(1)
    terminated = agent.td_target(reward, discount, torch.ones(5, 1), features)
    torch.manual_seed(1)
    truncated = agent.td_target(reward, discount, torch.zeros(5, 1), features)
    # The same next-state value, computed by hand with the same policy noise.
    torch.manual_seed(1)
    next_action, log_prob = agent.actor.sample(features)
    q1, q2 = agent.critic_target(features, next_action)
    next_value = torch.min(q1, q2) - agent.alpha * log_prob

    assert torch.equal(terminated, reward)
    assert torch.allclose(truncated, reward + 0.9 * next_value)
    assert not torch.allclose(truncated, reward)


def test_actor_loss_leaves_the_encoder_untouched_and_critic_loss_trains_it() -> None:
    agent = make_agent()
    batch = make_batch(agent)
    obs = torch.as_tensor(batch["obs"])
    encoder_before, actor_before = snapshot(agent.encoder), snapshot(agent.actor)

    features = agent.encode(obs, grad=True)
    assert features.requires_grad  # the graph reaches the encoder: detaching is the loss's job
    actor_loss, alpha_loss, _ = agent.actor_and_alpha_losses(features)
    actor_loss.backward()
    assert all(p.grad is None for p in agent.encoder.parameters())
    agent.actor_opt.step()
    assert same(encoder_before, snapshot(agent.encoder))
    assert not same(actor_before, snapshot(agent.actor))

    # The critic's loss does reach the encoder.
    features = agent.encode(obs, grad=True)
    target = torch.zeros(len(obs), 1)
    critic_loss, _ = agent.critic_loss(features, torch.as_tensor(batch["action"]), target)
    critic_loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.encoder.parameters())


def test_full_update_trains_the_encoder_only_when_not_frozen() -> None:
    trained = make_agent(actor_update_every=1)
    before = snapshot(trained.encoder)
    trained.update(make_batch(trained))
    assert not same(before, snapshot(trained.encoder))

    frozen = make_agent(actor_update_every=1, train_encoder=False)
    before, actor_before = snapshot(frozen.encoder), snapshot(frozen.actor)
    for seed in range(3):
        frozen.update(make_batch(frozen, seed=seed))
    assert same(before, snapshot(frozen.encoder))
    assert not same(actor_before, snapshot(frozen.actor))
    assert frozen.encoder_opt is None


def test_target_critic_moves_by_tau() -> None:
    agent = make_agent(tau=0.05, target_update_every=1)
    with torch.no_grad():  # make online and target differ
        for p in agent.critic.parameters():
            p.add_(torch.randn_like(p))
    target_before = snapshot(agent.critic_target)
    agent.update(make_batch(agent))  # critic step, then the soft update
    online = snapshot(agent.critic)
    target = snapshot(agent.critic_target)
    for k in target:
        expected = 0.95 * target_before[k] + 0.05 * online[k]
        assert torch.allclose(target[k], expected, atol=1e-6), k
        assert not torch.allclose(target[k], online[k])


def test_target_update_period_and_temperature_learning() -> None:
    agent = make_agent(target_update_every=2, actor_update_every=2)
    agent.update(make_batch(agent, seed=0))  # update 0: target moves, alpha moves
    target_after_first = snapshot(agent.critic_target)
    alpha_after_first = agent.alpha.item()
    assert abs(alpha_after_first - 0.1) > 1e-6
    agent.update(make_batch(agent, seed=1))  # update 1: neither moves
    assert same(target_after_first, snapshot(agent.critic_target))
    assert agent.alpha.item() == alpha_after_first


def test_actor_log_prob_matches_the_squashed_gaussian() -> None:
    actor = Actor(feature_dim=3, action_dim=2, hidden_dim=8, hidden_depth=1)
    features = torch.randn(4, 3)
    torch.manual_seed(3)
    action, log_prob = actor.sample(features)
    mean, log_std = actor(features)
    pre_tanh = torch.atanh(action.clamp(-1 + 1e-6, 1 - 1e-6))
    gaussian = torch.distributions.Normal(mean, log_std.exp()).log_prob(pre_tanh)
    expected = (gaussian - torch.log(1 - action.pow(2) + 1e-12)).sum(-1, keepdim=True)
    assert torch.allclose(log_prob, expected, atol=1e-3)
    assert action.abs().max() <= 1.0


def test_pixel_policy_acts_in_the_unit_box() -> None:
    policy = PixelPolicy(BACKBONE, {"feature_dim": 8, "action_dim": 3, "hidden_dim": 8})
    obs = torch.randint(0, 256, (2, 9, 16, 16), dtype=torch.uint8)
    action = policy.act(obs)
    assert action.shape == (2, 3) and action.dtype == torch.float32
    assert action.abs().max() <= 1.0
    assert torch.equal(action, policy.act(obs))  # deterministic


# --- augmentation ----------------------------------------------------------------------------
def test_random_shift_moves_the_whole_stack_by_at_most_pad_pixels() -> None:
    obs = torch.zeros(64, 6, 16, 16)
    obs[:, :, 8, 8] = 255.0  # one bright pixel, the same in every frame of the stack
    shifted = random_shift(obs, pad=2)
    assert shifted.shape == obs.shape
    offsets = set()
    for b in range(len(obs)):
        positions = [tuple(torch.nonzero(shifted[b, c]).flatten().tolist()) for c in range(6)]
        assert len(set(positions)) == 1, "frames of one stack were shifted differently"
        y, x = positions[0]
        assert abs(y - 8) <= 2 and abs(x - 8) <= 2
        offsets.add((y - 8, x - 8))
    assert len(offsets) > 5  # offsets vary across the batch
    assert torch.equal(random_shift(obs, pad=0), obs)


# --- replay buffer ---------------------------------------------------------------------------
def frame(value: int, size: int = 4) -> np.ndarray:
    """A (size, size, 3) frame filled with ``value`` (the frame's identity)."""
    return np.full((size, size, 3), value, dtype=np.uint8)


def stack_ids(stack: np.ndarray) -> list[int]:
    """Frame identities of a (3k, H, W) stack, oldest first."""
    return [int(stack[3 * i, 0, 0]) for i in range(stack.shape[0] // 3)]


def fill(buffer: ReplayBuffer, episodes: list[list[int]], terminal_last: list[bool]) -> None:
    """Episodes given as frame ids; reward of the step into frame f is f / 10."""
    for ids, terminal in zip(episodes, terminal_last, strict=True):
        buffer.start_episode(frame(ids[0]))
        for j, f in enumerate(ids[1:], start=1):
            buffer.add_step(np.array([f / 100.0], np.float32), f / 10.0, terminal and j == len(ids) - 1, frame(f))


def test_replay_stacks_are_correct_across_episode_boundaries() -> None:
    buffer = ReplayBuffer(64, (3, 4, 4), 1, frame_stack=3, n_step=1, gamma=0.5)
    fill(buffer, [[10, 11, 12, 13, 14], [20, 21, 22, 23]], [False, False])
    logical = np.arange(buffer.total)
    stacks = {stack_ids(buffer.stack(np.array([i]))[0])[-1]: stack_ids(buffer.stack(np.array([i]))[0]) for i in logical}
    assert stacks[10] == [10, 10, 10]
    assert stacks[11] == [10, 10, 11]
    assert stacks[14] == [12, 13, 14]
    assert stacks[20] == [20, 20, 20]  # never reaches back into the previous episode
    assert stacks[21] == [20, 20, 21]
    assert stacks[23] == [21, 22, 23]

    # Valid starts: every frame but an episode's last; next_obs is the following stack.
    starts = set(buffer.sample_indices(2000).tolist())
    assert starts == {0, 1, 2, 3, 5, 6, 7}
    batch = buffer.sample(256)
    for obs, nxt, action, reward in zip(batch["obs"], batch["next_obs"], batch["action"], batch["reward"], strict=True):
        now, after = stack_ids(obs), stack_ids(nxt)
        assert after[-1] == now[-1] + 1
        assert after == stacks[after[-1]]
        assert reward == pytest.approx(after[-1] / 10.0)
        assert action[0] == pytest.approx(after[-1] / 100.0)


def test_replay_matches_the_acting_frame_stack() -> None:
    buffer = ReplayBuffer(64, (3, 4, 4), 1, frame_stack=3)
    acting = FrameStacker(3)
    seen = []
    for ids in ([1, 2, 3, 4], [7, 8, 9]):
        buffer.start_episode(frame(ids[0]))
        seen.append((buffer.total - 1, acting.reset(frame(ids[0]))))
        for f in ids[1:]:
            buffer.add_step(np.zeros(1, np.float32), 0.0, False, frame(f))
            seen.append((buffer.total - 1, acting.push(frame(f))))
    for logical, obs in seen:
        assert np.array_equal(buffer.stack(np.array([logical]))[0], obs)


def test_replay_n_step_returns_stop_at_episode_end_and_keep_termination() -> None:
    buffer = ReplayBuffer(64, (3, 4, 4), 1, frame_stack=2, n_step=3, gamma=0.5)
    fill(buffer, [[10, 11, 12, 13], [20, 21, 22]], [False, True])  # truncated, then terminated
    batch = buffer.sample(512)
    by_start = {}
    for obs, nxt, r, d, t in zip(
        batch["obs"], batch["next_obs"], batch["reward"], batch["discount"], batch["terminated"], strict=True
    ):
        by_start[stack_ids(obs)[-1]] = (stack_ids(nxt)[-1], float(r), float(d), float(t))
    # Full 3-step return inside the episode.
    assert by_start[10] == (13, pytest.approx(1.1 + 0.5 * 1.2 + 0.25 * 1.3), 0.125, 0.0)
    # Cut short by the time limit: 2 steps, bootstraps from the episode's last frame.
    assert by_start[11] == (13, pytest.approx(1.2 + 0.5 * 1.3), 0.25, 0.0)
    assert by_start[12] == (13, pytest.approx(1.3), 0.5, 0.0)
    # Cut short by a true termination: no bootstrap.
    assert by_start[20] == (22, pytest.approx(2.1 + 0.5 * 2.2), 0.25, 1.0)
    assert by_start[21] == (22, pytest.approx(2.2), 0.5, 1.0)
    assert 13 not in by_start and 22 not in by_start


def test_replay_ring_never_builds_stacks_from_overwritten_frames() -> None:
    buffer = ReplayBuffer(10, (3, 4, 4), 1, frame_stack=3, n_step=2, gamma=0.9)
    fill(buffer, [list(range(100, 107)), list(range(110, 117))], [False, False])  # 14 frames into 10 slots
    assert len(buffer) == 10 and buffer.total == 14
    held = {100 + i for i in range(4, 7)} | set(range(110, 117))
    batch = buffer.sample(512)
    for obs, nxt in zip(batch["obs"], batch["next_obs"], strict=True):
        ids, next_ids = stack_ids(obs), stack_ids(nxt)
        assert set(ids) <= held and set(next_ids) <= held
        assert ids == sorted(ids) and next_ids == sorted(next_ids)
    starts = {stack_ids(o)[-1] for o in batch["obs"]}
    # 104 and 105 would need 102/103 (overwritten) in their stacks; 106 ends its episode.
    assert starts == {110, 111, 112, 113, 114, 115}


def test_replay_state_round_trips_into_any_capacity() -> None:
    buffer = ReplayBuffer(12, (3, 4, 4), 1, frame_stack=2, n_step=2, seed=5)
    fill(buffer, [list(range(30, 38)), list(range(40, 47))], [False, False])  # 15 frames, 12 held
    state = buffer.state_dict()
    expected = buffer.sample(64)
    # Held: logical 3..14. Starts: 4, 5, 6 (3 lacks its stack's older frame, 7 ends episode 1), 8..13.
    assert buffer.num_transitions() == 9
    for capacity in (12, 5000):
        restored = ReplayBuffer(capacity, (3, 4, 4), 1, frame_stack=2, n_step=2, seed=99)
        restored.load_state_dict(state)
        assert restored.num_transitions() == 9
        got = restored.sample(64)  # the sampling stream is part of the state
        for k in expected:
            assert np.array_equal(got[k], expected[k]), (capacity, k)


def test_replay_memory_estimate_and_bad_input() -> None:
    assert ReplayBuffer.estimate_bytes(1000, (3, 84, 84), 1) == 1000 * (3 * 84 * 84 + 4 + 13)
    buffer = ReplayBuffer(16, (3, 4, 4), 2, frame_stack=2)
    with pytest.raises(RuntimeError, match="start_episode"):
        buffer.add_step(np.zeros(2, np.float32), 0.0, False, frame(1))
    buffer.start_episode(frame(1))
    with pytest.raises(ValueError, match="action has shape"):
        buffer.add_step(np.zeros(3, np.float32), 0.0, False, frame(2))
    with pytest.raises(ValueError, match="frame has shape"):
        buffer.add_step(np.zeros(2, np.float32), 0.0, False, frame(2, size=5))
    with pytest.raises(RuntimeError, match="no transition"):
        buffer.sample(1)


def test_a_checkpoint_from_before_the_output_marker_is_replaced(tmp_path) -> None:
    """A resume checkpoint written by an earlier version (no .semore-output) is the cache's own: the next
    save replaces it instead of refusing, and a folder that is not a checkpoint is still refused."""
    from pipeline.common.io import OUTPUT_MARKER, OutputPathError
    from pipeline.finetune.checkpoint import AGENT_FILE, REPLAY_FILE, RUN_FILE, ResumeCheckpoint, TrainState

    agent = make_agent()
    buffer = ReplayBuffer(16, (3, 4, 4), 2, frame_stack=3)
    buffer.start_episode(frame(1))
    old = ResumeCheckpoint(tmp_path / "old")
    old.folder.mkdir()
    for name in (AGENT_FILE, REPLAY_FILE, RUN_FILE):
        (old.folder / name).write_text("from an earlier version")
    old.save(agent, buffer, TrainState(frame=7), np.random.default_rng(0), {"frame": 7})
    assert old.frame() == 7 and (old.folder / OUTPUT_MARKER).read_text() == "finetune checkpoint\n"

    stranger = ResumeCheckpoint(tmp_path / "notes")
    stranger.folder.mkdir()
    (stranger.folder / "mine.txt").write_text("keep me")
    with pytest.raises(OutputPathError, match="no .semore-output"):
        stranger.save(agent, buffer, TrainState(frame=7), np.random.default_rng(0), {"frame": 7})
    assert (stranger.folder / "mine.txt").read_text() == "keep me"

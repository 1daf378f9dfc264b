"""The batched vector agents (pipeline.finetune.ensemble_sac): one agent through the ensemble is today's SAC,
and the agents of an ensemble stay independent."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from models.ensemble import EnsembleMLP
from models.layers import mlp
from pipeline.config.evaluate import AgentParams
from pipeline.finetune.ensemble_sac import EnsembleSAC
from pipeline.finetune.sac import SAC, IdentityEncoder

OBS, ACT, BATCH = 5, 2, 16
PARAMS = AgentParams(batch_size=BATCH, hidden_dim=32, actor_update_every=2, target_update_every=2, tau=0.05)
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batches(n_agents: int, updates: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``updates`` replay batches of every agent, stacked along a leading agent dimension."""
    rng = np.random.default_rng(seed)

    def one() -> dict[str, np.ndarray]:
        return {
            "obs": rng.normal(size=(n_agents, BATCH, OBS)).astype(np.float32),
            "action": rng.uniform(-1, 1, (n_agents, BATCH, ACT)).astype(np.float32),
            "reward": rng.normal(size=(n_agents, BATCH)).astype(np.float32),
            "discount": np.full((n_agents, BATCH), 0.99, np.float32),
            "terminated": (rng.random((n_agents, BATCH)) < 0.1).astype(np.float32),
            "next_obs": rng.normal(size=(n_agents, BATCH, OBS)).astype(np.float32),
        }

    return [one() for _ in range(updates)]


def member_state(ensemble: EnsembleSAC, i: int) -> dict[str, torch.Tensor]:
    """Agent ``i``'s parameters as the ensemble holds them (actor, critics, targets, temperature)."""
    out = {"log_alpha": ensemble.log_alpha[i].detach().clone()}
    for name, module in (("actor", ensemble.actor), ("critic", ensemble.critic), ("target", ensemble.critic_target)):
        for key, value in module.state_dict().items():
            out[f"{name}.{key}"] = value[i].clone()
    return out


def sac_state(agent: SAC) -> dict[str, torch.Tensor]:
    """The same parameters of a single SAC, in the ensemble's layout (Linear weights transposed)."""
    out = {"log_alpha": agent.log_alpha.detach().clone()}
    for name, module in (("actor", agent.actor), ("critic", agent.critic), ("target", agent.critic_target)):
        parts = {"net": module.net} if name == "actor" else {"q1": module.q1, "q2": module.q2}
        for part, net in parts.items():
            for key, value in EnsembleMLP.from_mlps([net]).state_dict().items():
                out[f"{name}.{part}.{key}"] = value[0].clone()
    return out


def test_one_agent_through_the_ensemble_is_sac() -> None:
    """Same seed, same batches: every parameter, the actions and the logged losses agree to float rounding
    over updates that include the actor's, the temperature's and the target's."""
    torch.manual_seed(11)
    reference = SAC(IdentityEncoder(OBS), ACT, PARAMS, CPU, train_encoder=False)
    ensemble = EnsembleSAC(OBS, ACT, PARAMS, CPU, seeds=[11])
    assert sac_state(reference).keys() == member_state(ensemble, 0).keys()
    obs = np.random.default_rng(1).normal(size=(3, OBS)).astype(np.float32)
    for step, batch in enumerate(batches(1, 7)):
        got = ensemble.update(batch)
        want = reference.update({k: v[0] for k, v in batch.items()})
        for key in want:
            assert got[key][0] == pytest.approx(want[key], rel=1e-4, abs=1e-5), (step, key)
        np.testing.assert_allclose(
            ensemble.act(obs[None], sample=True)[0], reference.act_batch(obs, sample=True), atol=1e-5
        )
    for key, value in sac_state(reference).items():
        torch.testing.assert_close(member_state(ensemble, 0)[key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert ensemble.updates == reference.updates == 7


def test_agents_are_independent() -> None:
    """Changing agent 1's replay batches changes agent 1 only; agents 0 and 2 end bit for bit where they
    would have, and each agent equals the one-agent ensemble of its seed."""
    seeds = [3, 4, 5]
    plain, perturbed = EnsembleSAC(OBS, ACT, PARAMS, CPU, seeds), EnsembleSAC(OBS, ACT, PARAMS, CPU, seeds)
    for batch, other in zip(batches(3, 5), batches(3, 5, seed=99), strict=True):
        plain.update(batch)
        mixed = {k: v.copy() for k, v in batch.items()}
        for k in mixed:
            mixed[k][1] = other[k][1]
        perturbed.update(mixed)
    for i in (0, 2):
        for key, value in member_state(plain, i).items():
            assert torch.equal(member_state(perturbed, i)[key], value), (i, key)
    assert not torch.equal(
        member_state(perturbed, 1)["critic.q1.weights.0"], member_state(plain, 1)["critic.q1.weights.0"]
    )

    alone = EnsembleSAC(OBS, ACT, PARAMS, CPU, seeds=[5])
    for batch in batches(3, 5):
        alone.update({k: v[2:] for k, v in batch.items()})
    for key, value in member_state(alone, 0).items():
        torch.testing.assert_close(member_state(plain, 2)[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_a_state_dict_round_trip_continues_identically() -> None:
    first, second = EnsembleSAC(OBS, ACT, PARAMS, CPU, [1, 2]), EnsembleSAC(OBS, ACT, PARAMS, CPU, [7, 8])
    data = batches(2, 6)
    for batch in data[:3]:
        first.update(batch)
    saved = io.BytesIO()
    torch.save(first.state_dict(), saved)  # as a checkpoint does (a live state dict shares Adam's moments)
    saved.seek(0)
    second.load_state_dict(torch.load(saved, weights_only=True))
    for batch in data[3:]:
        a, b = first.update(batch), second.update(batch)
        assert all(np.array_equal(a[k], b[k]) for k in a)
    for i in range(2):
        assert all(torch.equal(member_state(first, i)[k], v) for k, v in member_state(second, i).items())


def test_ensemble_mlp_member_round_trip() -> None:
    torch.manual_seed(0)
    nets = [mlp(4, 8, 3, 2) for _ in range(3)]
    stacked = EnsembleMLP.from_mlps(nets)
    x = torch.randn(3, 5, 4)
    out = stacked(x)
    for i, net in enumerate(nets):
        torch.testing.assert_close(out[i], net(x[i]))
        torch.testing.assert_close(stacked.member(i)(x[i]), net(x[i]))
    with pytest.raises(ValueError, match="depth"):
        EnsembleMLP.from_mlps([mlp(4, 8, 3, 1), mlp(4, 8, 3, 2)])

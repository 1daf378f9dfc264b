"""N soft actor-critic agents over vector observations, updated as one batched network.

The vector arms (``state`` and ``frozen`` features) train several agents of one task that differ only
in their seed (and, for frozen features, in the backbone that made their observations): same shapes,
same hyperparameters. Here they are one module whose every tensor has a leading agent dimension N
(:mod:`models.ensemble`), so one update costs a handful of batched matrix products instead of N
separate small ones.

Each agent stays :class:`pipeline.finetune.sac.SAC` with an identity encoder:

* it is built by ``SAC`` itself under its own seed (``torch.manual_seed(seed)``), and its weights are
  stacked from there;
* its Gaussian noise (acting, TD target, actor loss) comes from its own ``torch.Generator``, which
  continues the global stream exactly where ``SAC`` would have drawn from it, in the same order;
* its losses are means over its own batch; the ensemble minimises their sum, which gives each agent
  the gradient of its own loss (no parameter is shared), and Adam is element-wise, so one Adam over
  the stacked tensors steps each agent as its own Adam would.

So one agent through the ensemble reproduces ``SAC`` to float rounding, and no agent's replay, loss or
noise reaches another agent's parameters (both tested). The equations are those of
:mod:`pipeline.finetune.sac` (read that file for them); every hyperparameter is a field of
:class:`pipeline.config.sac.SACParams`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.ensemble import EnsembleActor, EnsembleCritic
from pipeline.config.evaluate import AgentParams
from pipeline.finetune.sac import SAC, IdentityEncoder, heads_state, load_heads_state


class EnsembleSAC:
    """``len(seeds)`` independent SAC agents over (D,) float32 observations with actions in [-1, 1]^A.

    Args:
        obs_dim: D, the observation (feature) size every agent reads.
        action_dim: A.
        params: the agents' hyperparameters (shared: the ensemble batches agents of one arm).
        device: where the networks live and updates run.
        seeds: agent ``i`` is built and draws its noise as ``SAC`` under ``torch.manual_seed(seeds[i])``.
    """

    def __init__(
        self, obs_dim: int, action_dim: int, params: AgentParams, device: torch.device, seeds: Sequence[int]
    ) -> None:
        if not seeds:
            raise ValueError("an ensemble needs at least one agent (seeds is empty)")
        p = params
        self.device, self.n, self.action_dim = device, len(seeds), action_dim
        self.actor_update_every, self.target_update_every, self.tau = p.actor_update_every, p.target_update_every, p.tau
        self.target_entropy = -float(action_dim)
        members, self.generators = [], []
        for seed in seeds:
            torch.manual_seed(seed)
            members.append(SAC(IdentityEncoder(obs_dim), action_dim, p, torch.device("cpu"), train_encoder=False))
            generator = torch.Generator(device=device)
            if device.type == "cpu":  # continue the stream SAC would draw its noise from
                generator.set_state(torch.get_rng_state())
            else:
                generator.manual_seed(seed)
            self.generators.append(generator)
        self.actor = EnsembleActor.from_actors([m.actor for m in members]).to(device)
        self.critic = EnsembleCritic.from_critics([m.critic for m in members]).to(device)
        self.critic_target = EnsembleCritic.from_critics([m.critic_target for m in members]).to(device)
        self.critic_target.requires_grad_(False)
        self.log_alpha = torch.stack([m.log_alpha.detach() for m in members]).to(device).requires_grad_(True)

        adam = partial(torch.optim.Adam, fused=True)  # element-wise: N agents' Adams in one
        self.actor_opt = adam(self.actor.parameters(), lr=p.lr)
        self.critic_opt = adam(self.critic.parameters(), lr=p.lr)
        self.alpha_opt = adam([self.log_alpha], lr=p.alpha_lr)
        self.updates = 0

    @property
    def alpha(self) -> Tensor:
        """(N, 1, 1) temperatures."""
        return self.log_alpha.exp().view(-1, 1, 1)

    def noise(self, batch: int) -> Tensor:
        """(N, batch, A) standard normal draws, agent ``i``'s from its own generator."""
        shape = (batch, self.action_dim)
        return torch.stack([torch.randn(shape, generator=g, device=self.device) for g in self.generators])

    # --- acting ------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: np.ndarray, *, sample: bool) -> np.ndarray:
        """(N, M, D) observations (M per agent) -> (N, M, A) float32 actions: sampled, or each policy's mode."""
        features = torch.as_tensor(obs, device=self.device, dtype=torch.float32)
        if sample:
            action = self.actor.sample(features, self.noise(features.shape[1]))[0]
        else:
            action = self.actor.deterministic(features)
        return action.cpu().numpy().astype(np.float32)

    # --- losses (per agent: (N,) tensors) ------------------------------------------------------
    @torch.no_grad()
    def td_target(self, reward: Tensor, discount: Tensor, terminated: Tensor, next_obs: Tensor) -> Tensor:
        """(N, B, 1) soft TD targets; ``terminated`` = 1 stops the bootstrap, a truncation does not."""
        next_action, next_log_prob = self.actor.sample(next_obs, self.noise(next_obs.shape[1]))
        target_q1, target_q2 = self.critic_target(next_obs, next_action)
        next_value = torch.min(target_q1, target_q2) - self.alpha * next_log_prob
        return reward + discount * (1.0 - terminated) * next_value

    def critic_loss(self, obs: Tensor, action: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Each agent's summed mean squared TD errors of both critics (N,), and Q1 (N, B, 1)."""
        q1, q2 = self.critic(obs, action)
        return (q1 - target).pow(2).mean((1, 2)) + (q2 - target).pow(2).mean((1, 2)), q1

    def actor_and_alpha_losses(self, obs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Each agent's actor loss, temperature loss and entropy estimate, all (N,)."""
        action, log_prob = self.actor.sample(obs, self.noise(obs.shape[1]))
        self.critic.requires_grad_(False)  # no critic gradient here: a third fewer products
        try:
            q1, q2 = self.critic(obs, action)
        finally:
            self.critic.requires_grad_(True)
        actor_loss = (self.alpha.detach() * log_prob - torch.min(q1, q2)).mean((1, 2))
        alpha_loss = (self.alpha * (-log_prob - self.target_entropy).detach()).mean((1, 2))
        return actor_loss, alpha_loss, -log_prob.mean((1, 2)).detach()

    # --- one update for every agent ------------------------------------------------------------
    def update(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One gradient update of every agent from its own replay batch: ``batch``'s arrays are
        :meth:`VectorReplay.sample`'s stacked along a leading N. Returns (N,) arrays to log."""
        b = {k: torch.as_tensor(v, device=self.device) for k, v in batch.items()}
        reward, discount, terminated = (b[k].float().unsqueeze(-1) for k in ("reward", "discount", "terminated"))
        obs, next_obs = b["obs"].float(), b["next_obs"].float()

        target = self.td_target(reward, discount, terminated, next_obs)
        critic_loss, q1 = self.critic_loss(obs, b["action"], target)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.sum().backward()
        self.critic_opt.step()
        info = {"critic_loss": critic_loss, "q1": q1.mean((1, 2)), "batch_reward": reward.mean((1, 2))}

        if self.updates % self.actor_update_every == 0:
            actor_loss, alpha_loss, entropy = self.actor_and_alpha_losses(obs)
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.sum().backward()
            self.actor_opt.step()
            self.alpha_opt.zero_grad(set_to_none=True)
            alpha_loss.sum().backward()
            self.alpha_opt.step()
            info.update(actor_loss=actor_loss, alpha_loss=alpha_loss, entropy=entropy)
        info["alpha"] = self.log_alpha.exp()

        if self.updates % self.target_update_every == 0:
            self.soft_update_target()
        self.updates += 1
        return {k: v.detach().cpu().numpy() for k, v in info.items()}

    @torch.no_grad()
    def soft_update_target(self) -> None:
        """target <- tau * online + (1 - tau) * target, for every agent at once."""
        for online, target in zip(self.critic.parameters(), self.critic_target.parameters(), strict=True):
            target.lerp_(online, self.tau)

    # --- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Stacked networks, temperatures, optimiser states, the agents' generators and the update counter."""
        return {**heads_state(self), "generators": [g.get_state() for g in self.generators]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_heads_state(self, state)
        for generator, saved in zip(self.generators, state["generators"], strict=True):
            generator.set_state(saved)

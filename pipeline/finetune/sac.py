"""Soft actor-critic from pixels, DrQ-style: read this file top to bottom.

One encoder (any module mapping (B, 3k, H, W) pixels in [0, 255] to (B, feature_dim), e.g. the
pretrained :class:`models.backbone.DualPathBackbone`) feeds an actor head and twin critic heads.

* Augmentation: every sampled observation (and next observation) is randomly shifted by up to
  ``aug_pad`` pixels (:func:`pipeline.finetune.augment.random_shift`).
* Critic: clipped double-Q. The TD target is
  ``y = r + discount * (1 - terminated) * (min(Q1', Q2')(s', a') - alpha * log pi(a'|s'))``
  with ``a' ~ pi(.|s')``, Q' the target critics and ``discount = gamma ** m`` for an m-step
  return. Only a true termination zeroes the bootstrap; a time-limit truncation bootstraps.
  The critic's loss is the only loss that trains the encoder (unless it is frozen).
* Actor: minimises ``alpha * log pi(a|s) - min(Q1, Q2)(s, a)`` on *detached* encoder features,
  so the actor's gradient never reaches the encoder.
* Temperature: ``log alpha`` is learned so that the policy's entropy tracks ``-action_dim``.
* Target critics: ``target <- tau * online + (1 - tau) * target`` every ``target_update_every``
  updates. The target uses the online encoder's features of s' (DrQ-v2 layout: one encoder).

Every hyperparameter is a field of :class:`pipeline.config.sac.SACParams` (or of the sections built on it), documented
where it is declared; this module reads them from there.
"""

from __future__ import annotations

import copy
import math
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.actor import Actor
from models.critic import Critic
from pipeline.config.evaluate import AgentParams
from pipeline.config.finetune import FinetuneParams
from pipeline.finetune.augment import random_shift


class IdentityEncoder(nn.Identity):
    """The encoder slot of a vector-observation agent (the state arm, frozen features): features are the
    (B, D) float32 observation itself."""

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        self.feature_dim = feature_dim


class SAC:
    """The agent: encoder, actor, twin critics, target critics, temperature, and their optimisers.

    Args:
        encoder: module with attribute ``feature_dim`` mapping (B, 3k, H, W) pixels in [0, 255]
            (uint8 or float) to (B, feature_dim) float32 features.
        action_dim: A; actions live in [-1, 1]^A (the trainer rescales them to the env's box).
        params: hyperparameters: :class:`FinetuneParams` (pixels) or :class:`AgentParams` (vectors; no
            augmentation), both :class:`pipeline.config.sac.SACParams`.
        device: where the networks live and updates run.
        train_encoder: False freezes the encoder (``encoder_init: frozen``): no optimiser, no
            gradient, eval mode.
    """

    def __init__(
        self,
        encoder: nn.Module,
        action_dim: int,
        params: FinetuneParams | AgentParams,
        device: torch.device,
        *,
        train_encoder: bool = True,
    ) -> None:
        p = params
        self.device = device
        self.action_dim = action_dim
        self.train_encoder = train_encoder
        self.aug_pad = p.aug_pad
        self.actor_update_every = p.actor_update_every
        self.target_update_every = p.target_update_every
        self.tau = p.tau
        self.target_entropy = -float(action_dim)

        feature_dim = int(encoder.feature_dim)
        self.encoder = encoder.to(device)
        self.actor = Actor(feature_dim, action_dim, p.hidden_dim, p.hidden_depth, p.log_std_min, p.log_std_max).to(
            device
        )
        self.critic = Critic(feature_dim, action_dim, p.hidden_dim, p.hidden_depth).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(p.init_temperature), device=device, requires_grad=True)

        # fused Adam: one kernel per optimiser step instead of ~10 per parameter (a sixth of a
        # vector-arm update on the CPU); same update rule.
        adam = partial(torch.optim.Adam, fused=True)
        self.actor_opt = adam(self.actor.parameters(), lr=p.lr)
        self.critic_opt = adam(self.critic.parameters(), lr=p.lr)
        self.alpha_opt = adam([self.log_alpha], lr=p.alpha_lr)
        self.encoder_opt: torch.optim.Optimizer | None = None
        if train_encoder:
            self.encoder.train()
            self.encoder_opt = adam(self.encoder.parameters(), lr=p.encoder_lr or p.lr)
        else:
            self.encoder.eval().requires_grad_(False)
        self.updates = 0

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.exp()

    # --- acting ------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: np.ndarray, *, sample: bool) -> np.ndarray:
        """One observation (a (3k, H, W) uint8 stack, or a (D,) vector for an identity encoder) ->
        (A,) float32 action in [-1, 1]: sampled, or the policy's mode."""
        return self.act_batch(obs[None], sample=sample)[0]

    @torch.no_grad()
    def act_batch(self, obs: np.ndarray, *, sample: bool) -> np.ndarray:
        """(N, ...) observations -> (N, A) float32 actions in [-1, 1] (one forward for all)."""
        features = self.encoder(torch.as_tensor(obs, device=self.device))
        action = self.actor.sample(features)[0] if sample else self.actor.deterministic(features)
        return action.cpu().numpy().astype(np.float32)

    # --- losses ------------------------------------------------------------------------------
    def encode(self, obs: Tensor, *, grad: bool) -> Tensor:
        """Augment (B, 3k, H, W) pixels and encode them; gradients reach the encoder only if ``grad``."""
        obs = random_shift(obs.float(), self.aug_pad)
        with torch.set_grad_enabled(grad and self.train_encoder):
            return self.encoder(obs)

    @torch.no_grad()
    def td_target(self, reward: Tensor, discount: Tensor, terminated: Tensor, next_features: Tensor) -> Tensor:
        """(B, 1) soft TD target; ``terminated`` = 1 stops the bootstrap, a truncation (0) does not."""
        next_action, next_log_prob = self.actor.sample(next_features)
        target_q1, target_q2 = self.critic_target(next_features, next_action)
        next_value = torch.min(target_q1, target_q2) - self.alpha.detach() * next_log_prob
        return reward + discount * (1.0 - terminated) * next_value

    def critic_loss(self, features: Tensor, action: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Sum of both critics' mean squared TD errors; also returns Q1 (B, 1) for logging."""
        q1, q2 = self.critic(features, action)
        return F.mse_loss(q1, target) + F.mse_loss(q2, target), q1

    def actor_and_alpha_losses(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Actor loss on detached features, the temperature loss, and the policy entropy estimate."""
        features = features.detach()
        action, log_prob = self.actor.sample(features)
        # The critic's weights get no gradient here (the critic step zeroes them anyway): a third
        # fewer matrix products in this step.
        self.critic.requires_grad_(False)
        try:
            q1, q2 = self.critic(features, action)
        finally:
            self.critic.requires_grad_(True)
        actor_loss = (self.alpha.detach() * log_prob - torch.min(q1, q2)).mean()
        alpha_loss = (self.alpha * (-log_prob - self.target_entropy).detach()).mean()
        return actor_loss, alpha_loss, -log_prob.mean().detach()

    # --- one update --------------------------------------------------------------------------
    def update(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        """One gradient update from a replay batch (see :meth:`ReplayBuffer.sample`); returns scalars to log."""
        b = {k: torch.as_tensor(v, device=self.device) for k, v in batch.items()}
        reward, discount, terminated = (b[k].float().unsqueeze(-1) for k in ("reward", "discount", "terminated"))
        features = self.encode(b["obs"], grad=True)
        next_features = self.encode(b["next_obs"], grad=False)

        target = self.td_target(reward, discount, terminated, next_features)
        critic_loss, q1 = self.critic_loss(features, b["action"], target)
        self.critic_opt.zero_grad(set_to_none=True)
        if self.encoder_opt is not None:
            self.encoder_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        if self.encoder_opt is not None:
            self.encoder_opt.step()
        info = {"critic_loss": critic_loss.item(), "q1": q1.mean().item(), "batch_reward": reward.mean().item()}

        if self.updates % self.actor_update_every == 0:
            actor_loss, alpha_loss, entropy = self.actor_and_alpha_losses(features)
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_opt.step()
            self.alpha_opt.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_opt.step()
            info.update(actor_loss=actor_loss.item(), alpha_loss=alpha_loss.item(), entropy=entropy.item())
        info["alpha"] = self.alpha.item()

        if self.updates % self.target_update_every == 0:
            self.soft_update_target()
        self.updates += 1
        return info

    @torch.no_grad()
    def soft_update_target(self) -> None:
        """target <- tau * online + (1 - tau) * target, parameter by parameter."""
        for online, target in zip(self.critic.parameters(), self.critic_target.parameters(), strict=True):
            target.lerp_(online, self.tau)

    # --- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Networks, temperature, optimiser states and the update counter."""
        state = {**heads_state(self), "encoder": self.encoder.state_dict()}
        if self.encoder_opt is not None:
            state["encoder_opt"] = self.encoder_opt.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.encoder.load_state_dict(state["encoder"])
        load_heads_state(self, state)
        if self.encoder_opt is not None:
            self.encoder_opt.load_state_dict(state["encoder_opt"])


#: What an agent's heads hold besides ``log_alpha`` and ``updates``: networks and their optimisers.
_HEADS = ("actor", "critic", "critic_target", "actor_opt", "critic_opt", "alpha_opt")


def heads_state(agent: Any) -> dict[str, Any]:
    """The actor, critics, target critics, temperature, their optimisers' states and the update counter of
    ``agent`` (a :class:`SAC` or an ``EnsembleSAC``: same attribute names), as one checkpointable dict."""
    state = {name: getattr(agent, name).state_dict() for name in _HEADS}
    return {**state, "log_alpha": agent.log_alpha.detach().clone(), "updates": agent.updates}


def load_heads_state(agent: Any, state: dict[str, Any]) -> None:
    """Restore what :func:`heads_state` saved into ``agent``."""
    for name in _HEADS:
        getattr(agent, name).load_state_dict(state[name])
    with torch.no_grad():
        agent.log_alpha.copy_(state["log_alpha"])
    agent.updates = int(state["updates"])

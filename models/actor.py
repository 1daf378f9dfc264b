"""SAC actor head (tanh-squashed Gaussian over features) and the deployable pixel policy.

* :class:`Actor`: (B, feature_dim) encoder features -> a Gaussian over pre-tanh actions, squashed
  by tanh into [-1, 1]; its log-probability includes the tanh change of variables.
* :class:`PixelPolicy`: encoder + actor in one module, constructible from JSON-able kwargs, so
  :mod:`models.checkpoint` can save and rebuild it. ``act(obs)`` maps a uint8 frame stack to
  deterministic actions; the collect stage's ``checkpoint`` policy loads it.
"""
from __future__ import annotations

import importlib
import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

#: Default encoder of :class:`PixelPolicy`: the pretrained dual-path backbone.
DEFAULT_ENCODER = "models.backbone:DualPathBackbone"


def mlp(in_dim: int, hidden_dim: int, out_dim: int, hidden_depth: int) -> nn.Sequential:
    """``hidden_depth`` (Linear, ReLU) layers of width ``hidden_dim``, then a Linear to ``out_dim``."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(hidden_depth):
        layers += [nn.Linear(width, hidden_dim), nn.ReLU(inplace=True)]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def orthogonal_init(module: nn.Module) -> None:
    """Orthogonal weights, zero biases for every Linear (the usual init of pixel SAC heads)."""
    if isinstance(module, nn.Linear):
        nn.init.orthogonal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class Actor(nn.Module):
    """Squashed-Gaussian policy head.

    Args:
        feature_dim: size of the encoder features it reads.
        action_dim: A, the number of action dimensions (actions live in [-1, 1]^A).
        hidden_dim, hidden_depth: MLP width and number of hidden layers.
        log_std_min, log_std_max: the pre-tanh log standard deviation is squashed into this range.
    """

    def __init__(self, feature_dim: int, action_dim: int, hidden_dim: int = 256, hidden_depth: int = 2, log_std_min: float = -10.0, log_std_max: float = 2.0) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.log_std_min = log_std_min
        self.log_std_max = log_std_max
        self.net = mlp(feature_dim, hidden_dim, 2 * action_dim, hidden_depth)
        self.apply(orthogonal_init)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(B, feature_dim) -> pre-tanh mean (B, A) and log std (B, A), both float32."""
        mean, log_std = self.net(features).chunk(2, dim=-1)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(log_std) + 1.0)
        return mean, log_std

    def sample(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """A reparameterised action in [-1, 1] (B, A) and its log-probability (B, 1)."""
        mean, log_std = self(features)
        noise = torch.randn_like(mean)
        pre_tanh = mean + noise * log_std.exp()
        action = torch.tanh(pre_tanh)
        gaussian = -0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        # log(1 - tanh(u)^2) written stably: 2 * (log 2 - u - softplus(-2u)).
        squash = 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))
        return action, (gaussian - squash).sum(-1, keepdim=True)

    def deterministic(self, features: Tensor) -> Tensor:
        """The mode of the squashed policy, tanh(mean): (B, A) in [-1, 1]."""
        return torch.tanh(self(features)[0])


def import_class(path: str) -> type:
    """``'package.module:ClassName'`` -> the class."""
    module_name, _, qualname = path.partition(":")
    if not qualname:
        raise ValueError(f"{path!r}: expected 'package.module:ClassName'")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class PixelPolicy(nn.Module):
    """Encoder + actor: a uint8 frame stack in, deterministic actions in [-1, 1] out.

    Args:
        encoder_config: kwargs of the encoder class (JSON-able).
        actor_config: kwargs of :class:`Actor` (JSON-able).
        encoder_class: ``'package.module:ClassName'`` of the encoder; it must expose
            ``feature_dim`` and map (B, 3k, H, W) pixels in [0, 255] to (B, feature_dim).
    """

    def __init__(self, encoder_config: dict[str, Any], actor_config: dict[str, Any], encoder_class: str = DEFAULT_ENCODER) -> None:
        super().__init__()
        self.encoder = import_class(encoder_class)(**encoder_config)
        self.actor = Actor(**actor_config)

    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        """(B, 3 * frame_stack, H, W) uint8 (oldest frame first) -> (B, A) float32 actions in [-1, 1]."""
        return self.actor.deterministic(self.encoder(obs))

    def forward(self, obs: Tensor) -> Tensor:
        return self.act(obs)

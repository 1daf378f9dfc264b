"""SAC critic head: twin Q-networks over (encoder features, action).

The encoder is not part of this module: the SAC agent owns one encoder, trained by the critic's
loss, and feeds its features here (DrQ-v2 layout). The target critic is a copy of this module.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.layers import mlp, orthogonal_init


class Critic(nn.Module):
    """Two independent Q-functions (clipped double-Q learning).

    Args:
        feature_dim: size of the encoder features.
        action_dim: A (actions in [-1, 1]^A).
        hidden_dim, hidden_depth: MLP width and number of hidden layers of each Q-function.
    """

    def __init__(self, feature_dim: int, action_dim: int, hidden_dim: int = 256, hidden_depth: int = 2) -> None:
        super().__init__()
        self.q1 = mlp(feature_dim + action_dim, hidden_dim, 1, hidden_depth)
        self.q2 = mlp(feature_dim + action_dim, hidden_dim, 1, hidden_depth)
        self.apply(orthogonal_init)

    def forward(self, features: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """(B, feature_dim), (B, A) -> Q1, Q2 each (B, 1) float32."""
        x = torch.cat([features, action], dim=-1)
        return self.q1(x), self.q2(x)

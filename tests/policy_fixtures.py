"""A tiny actor with the finetune stage's actor interface, for the collect stage's checkpoint tests.

``act(obs)``: uint8 (B, 3 * frame_stack, H, W), oldest frame first -> (B, action_dim) in [-1, 1].
It must be importable by module path (``models.checkpoint.load_module`` rebuilds it by name,
also inside spawned worker processes), and it is registered with
``models.checkpoint.register_checkpoint_class``: a checkpoint may only build allowed classes.
"""

from __future__ import annotations

import torch
from torch import nn

from models.checkpoint import register_checkpoint_class


@register_checkpoint_class
class TinyActor(nn.Module):
    """Mean colour of each stacked frame -> linear -> tanh. Different frames give different actions."""

    def __init__(self, action_dim: int, frame_stack: int) -> None:
        super().__init__()
        self.frame_stack = frame_stack
        self.head = nn.Linear(3 * frame_stack, action_dim)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        features = obs.float().mean(dim=(2, 3)) / 255.0 * 10.0
        return torch.tanh(self.head(features))

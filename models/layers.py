"""Small building blocks shared by the networks in :mod:`models` (torch only)."""

from __future__ import annotations

from torch import nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, hidden_depth: int = 1) -> nn.Sequential:
    """``hidden_depth`` (Linear, ReLU) layers of width ``hidden_dim``, then a Linear to ``out_dim``.

    (B, in_dim) float -> (B, out_dim) float. ``hidden_depth=0`` is a single Linear. Layer indices
    in the state dict are ``0, 2, 4, ...`` (every Linear follows a ReLU).
    """
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(hidden_depth):
        layers += [nn.Linear(width, hidden_dim), nn.ReLU(inplace=True)]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def orthogonal_init(module: nn.Module) -> None:
    """Orthogonal weights, zero biases for every Linear (the usual init of pixel SAC heads);
    use with ``module.apply``."""
    if isinstance(module, nn.Linear):
        nn.init.orthogonal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)

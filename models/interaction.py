"""Information exchange between the semantic and motion paths (unsupervised).

Each module maps ``(s, m)`` -> ``(s', m')`` for the semantic map ``(B, Cs, h, w)`` and the motion
map ``(B, Cm, h', w')``, as residual updates: ``s' = s + f(s, m)`` and ``m' = m + g(s, m)``. It is
constructed as ``Kind(semantic_channels, motion_channels)`` (the motion width defaults to the
semantic one). A new kind is one class and one line in :data:`INTERACTIONS`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _widths(semantic_channels: int, motion_channels: int | None) -> tuple[int, int]:
    """(semantic, motion) widths; the motion width defaults to the semantic one only when None."""
    return semantic_channels, semantic_channels if motion_channels is None else motion_channels


class GatedExchange(nn.Module):
    """Gated feature exchange: each path adds a 1x1-conv message from the other, scaled by a
    sigmoid gate computed from both (per pixel and channel). Six 1x1 convs over the full maps: on a
    CPU one exchange costs more than two 3x3 layers.
    Both maps must have the same size (h, w)."""

    def __init__(self, semantic_channels: int, motion_channels: int | None = None) -> None:
        super().__init__()
        cs, cm = _widths(semantic_channels, motion_channels)
        self.to_semantic = nn.Conv2d(cm, cs, 1)
        self.to_motion = nn.Conv2d(cs, cm, 1)
        self.gate_semantic = nn.Conv2d(cs + cm, cs, 1)
        self.gate_motion = nn.Conv2d(cs + cm, cm, 1)
        # Start mostly closed (sigmoid(-2) ~ 0.12) so each path first learns its own task.
        nn.init.constant_(self.gate_semantic.bias, -2.0)
        nn.init.constant_(self.gate_motion.bias, -2.0)

    def forward(self, s: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        both = torch.cat([s, m], dim=1)
        s_new = s + torch.sigmoid(self.gate_semantic(both)) * self.to_semantic(m)
        m_new = m + torch.sigmoid(self.gate_motion(both)) * self.to_motion(s)
        return s_new, m_new


class GlobalGatedExchange(nn.Module):
    """Channel-wise gated exchange: each path adds to every pixel of its map a per-channel message
    (a Linear of the other path's spatial mean), scaled by a per-channel sigmoid gate computed from
    both paths' means. It never convolves the maps: per path one mean and one broadcast add, a
    small fraction of a 3x3 layer's cost (the per-pixel ``gated`` exchange costs more than two).

    Shapes: ``s`` (B, Cs, h, w), ``m`` (B, Cm, h', w') -> the same; messages and gates (B, Cs)
    and (B, Cm)."""

    def __init__(self, semantic_channels: int, motion_channels: int | None = None) -> None:
        super().__init__()
        cs, cm = _widths(semantic_channels, motion_channels)
        self.to_semantic = nn.Linear(cm, cs)
        self.to_motion = nn.Linear(cs, cm)
        self.gates = nn.Linear(cs + cm, cs + cm)
        self.widths = (cs, cm)
        # Start mostly closed (sigmoid(-2) ~ 0.12) so each path first learns its own task.
        nn.init.constant_(self.gates.bias, -2.0)

    def forward(self, s: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        mean_s, mean_m = s.mean((2, 3)), m.mean((2, 3))  # (B, C) each
        gate_s, gate_m = torch.sigmoid(self.gates(torch.cat([mean_s, mean_m], dim=1))).split(self.widths, dim=1)
        to_s = gate_s * self.to_semantic(mean_m)
        to_m = gate_m * self.to_motion(mean_s)
        return s + to_s[:, :, None, None], m + to_m[:, :, None, None]


class CrossAttentionExchange(nn.Module):
    """Cross-attention over pooled tokens: each path's tokens (maps average-pooled to a
    ``tokens`` x ``tokens`` grid) attend to the other path's tokens; the result is upsampled
    back to the map and added with a learned per-path scale (starting at 0, ReZero-style)."""

    def __init__(
        self, semantic_channels: int, motion_channels: int | None = None, tokens: int = 7, heads: int = 4
    ) -> None:
        super().__init__()
        cs, cm = _widths(semantic_channels, motion_channels)
        self.tokens = tokens
        self.norm_s = nn.LayerNorm(cs)
        self.norm_m = nn.LayerNorm(cm)
        # Each attention's queries come from one path and its keys and values from the other.
        self.attend_s = nn.MultiheadAttention(cs, heads if cs % heads == 0 else 1, kdim=cm, vdim=cm, batch_first=True)
        self.attend_m = nn.MultiheadAttention(cm, heads if cm % heads == 0 else 1, kdim=cs, vdim=cs, batch_first=True)
        self.scale_s = nn.Parameter(torch.zeros(1))
        self.scale_m = nn.Parameter(torch.zeros(1))

    def _tokens(self, x: Tensor, norm: nn.LayerNorm) -> Tensor:
        pooled = F.adaptive_avg_pool2d(x, self.tokens)  # (B, C, t, t)
        return norm(pooled.flatten(2).transpose(1, 2))  # (B, t*t, C)

    def _back(self, tokens: Tensor, like: Tensor) -> Tensor:
        b, c = like.shape[:2]
        grid = tokens.transpose(1, 2).reshape(b, c, self.tokens, self.tokens)
        return F.interpolate(grid, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, s: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        ts, tm = self._tokens(s, self.norm_s), self._tokens(m, self.norm_m)
        from_m, _ = self.attend_s(ts, tm, tm, need_weights=False)
        from_s, _ = self.attend_m(tm, ts, ts, need_weights=False)
        return s + self.scale_s * self._back(from_m, s), m + self.scale_m * self._back(from_s, m)


#: ``interaction_kind`` -> module class (constructed with the semantic and motion channel counts).
INTERACTIONS: dict[str, type[nn.Module]] = {
    "gated": GatedExchange,
    "global": GlobalGatedExchange,
    "attention": CrossAttentionExchange,
}

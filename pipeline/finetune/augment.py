"""Random-shift image augmentation (DrQ / DrQ-v2): pad by replicating edges, crop back at a random offset.

Every frame of one stacked observation moves by the same shift, so the motion between frames is
kept; each observation in the batch draws its own shift.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def random_shift(obs: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """Shift each image of a batch by a random integer offset in [-pad, pad] along x and y.

    Args:
        obs: (B, C, H, W) float pixels (any range); C holds the whole frame stack.
        pad: maximum shift in pixels; 0 returns ``obs`` unchanged.
        generator: torch RNG for the offsets (on ``obs``'s device); default: the global one.

    Returns:
        (B, C, H, W) float, the shifted images; pixels shifted in from outside repeat the edge.
    """
    if pad == 0:
        return obs
    b, _, h, w = obs.shape
    padded = F.pad(obs, (pad, pad, pad, pad), mode="replicate")
    shift = torch.randint(0, 2 * pad + 1, (b, 2), device=obs.device, generator=generator)
    rows = shift[:, 0, None] + torch.arange(h, device=obs.device)  # (B, H)
    cols = shift[:, 1, None] + torch.arange(w, device=obs.device)  # (B, W)
    batch = torch.arange(b, device=obs.device)[:, None, None]
    # Index the padded images as (B, Hp, Wp, C) so the gather keeps channels last, then move them back.
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()

"""The dual-path semantic-motion backbone: stacked RGB frames in, one fused feature vector out.

Input ``obs``: ``(B, 3 * frame_stack, H, W)``, uint8 or float in [0, 255], RGB, oldest frame
first (channels ``3i:3i+3`` are frame ``i``; the last three are the current frame). The module
normalises it itself (``obs / 255 - 0.5``), so callers pass raw pixels.

* Semantic path: a conv trunk over the **current frame** only (appearance: what is in the frame).
* Motion path: a conv trunk over the **whole stack** (how it moves), optionally with the optical
  flow between the last two frames as two extra input channels (``flow_input=True``, for
  comparison; the online agent then has to compute flow too).
* Interaction: after the layers listed in ``interaction_layers`` the paths exchange information
  (``interaction_kind``: ``global`` per-channel gated messages from the other path's spatial
  mean, nearly free; ``gated`` per-pixel 1x1-conv gated exchange, which costs more than two conv
  layers; or ``attention`` cross-attention over pooled tokens; registry
  :data:`models.interaction.INTERACTIONS`). ``interaction=False`` turns it off (ablation): the
  two trunks are then independent.
* ``paths`` (ablation): ``both`` (the design), or ``semantic`` / ``motion`` for a backbone with
  that one path only. The single path then serves every head: :class:`PathOutputs` gives its
  vector and map as both the semantic and the motion ones, so the CLIP heads and the flow decoder
  read the same path and the loss set stays fixed; only the two-path structure is taken away.
* ``semantic_channels``: the semantic path's conv width (default: ``channels``, both paths alike).
  Fewer channels cut that path's conv cost by about the square of the ratio while keeping its
  resolution (not the default: docs/RESULTS.md 1h).
* ``semantic_stride``: the semantic path's second conv has this stride. 1 (the default) keeps
  both paths at one resolution. 2 runs the semantic path's later layers on maps half the motion
  path's size each way (21 x 21 at 84 px), on the argument that what is in a frame needs less
  resolution than how it moves (SlowFast): about 4x less conv cost on that path (not the
  default: docs/RESULTS.md 1d). The ``global`` and ``attention`` exchanges work across map
  sizes; ``gated`` (per pixel) needs 1.
* Each path ends in a vector (``path_dim`` = ``feature_dim``): pooled map -> Linear -> LayerNorm.
  The fused vector is ``LayerNorm(Linear(cat(semantic, motion)))``, size ``feature_dim``, float32:
  what the SAC stage consumes.

Trunks are DrQ-v2-like (3x3 convs, ``channels`` wide, the first with stride 2). ``padding=1``
(the constructor's default, so older checkpoints rebuild) keeps the maps aligned with the image
(``ceil(H / 2)`` a side); ``padding=0`` uses valid convs as DrQ-v2 does (35 x 35 at 84 px): about
0.8x the multiply-adds, and the flow decoder pads the ``map_border`` lost cells back.
All constructor arguments are JSON-able, so :mod:`models.checkpoint` can rebuild the module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.interaction import INTERACTIONS

#: ``paths``: both (the design), or one path alone (ablation).
PATHS = ("both", "semantic", "motion")


@dataclass
class PathOutputs:
    """What :meth:`DualPathBackbone.forward_paths` returns (all float32).

    Attributes:
        semantic: (B, feature_dim) semantic-path vector (the CLIP projection heads read it).
        motion: (B, feature_dim) motion-path vector.
        fused: (B, feature_dim) fused vector (``forward`` returns this; the reward head reads it).
        semantic_map: (B, semantic_channels, h', w') last semantic feature map
            (h' = ceil(h / semantic_stride) when padded).
        motion_map: (B, channels, h, w) last motion feature map, h = ``map_size`` (ceil(H / 2) when
            padded; ``map_border`` cells short of that on each side when not); the flow decoder reads it.
    """

    semantic: Tensor
    motion: Tensor
    fused: Tensor
    semantic_map: Tensor
    motion_map: Tensor


def _trunk(in_channels: int, channels: int, depth: int, second_stride: int = 1, padding: int = 1) -> nn.ModuleList:
    layers = [nn.Conv2d(in_channels, channels, 3, stride=2, padding=padding)]
    layers += [
        nn.Conv2d(channels, channels, 3, stride=second_stride if i == 1 else 1, padding=padding)
        for i in range(1, depth)
    ]
    return nn.ModuleList(layers)


def _trunk_size(size: int, depth: int, second_stride: int, padding: int) -> int:
    """Side of a :func:`_trunk`'s last map for a ``size`` x ``size`` input (< 1: too small)."""
    for i in range(depth):
        stride = 2 if i == 0 else second_stride if i == 1 else 1
        size = (size + 2 * padding - 3) // stride + 1
    return size


class DualPathBackbone(nn.Module):
    """Semantic + motion conv paths with optional information exchange; see the module docstring.

    Args:
        frame_stack: frames k in the input stack (input channels 3k).
        image_size: input height = width in pixels.
        feature_dim: size of the fused vector (and of each path's vector).
        channels: conv width of the motion path (and of the semantic path unless ``semantic_channels``).
        semantic_channels: conv width of the semantic path; None: ``channels``.
        depth: conv layers per path (the first has stride 2).
        interaction: let the paths exchange information (False: independent paths, ablation).
        interaction_kind: ``global``, ``gated`` or ``attention`` (see :mod:`models.interaction`).
        interaction_layers: 0-based conv layers after which the paths exchange; None: after every
            layer but the first (layers 1 .. depth-1).
        flow_input: the motion path also takes the flow between the last two frames (2 channels,
            pixels) as input; ``forward`` then needs ``flow``.
        pool: average-pooling kernel applied to the last maps before the vector projection
            (keeps the Linear layers small: 32 x 21 x 21 inputs at 84 px with pool 2).
        paths: ``both``, or ``semantic`` / ``motion`` for that path alone (ablation; no exchange,
            and the one path feeds every head: see the module docstring).
        semantic_stride: stride of the semantic path's second conv (1 or 2; needs ``depth`` >= 2
            when 2). Its map is pooled by ``pool / semantic_stride`` so that both heads see the
            same grid (``pool`` must be a multiple of it).
        padding: of every trunk conv: 1 (maps aligned with the image, ``ceil(H / 2)`` a side) or 0
            (valid convs, as DrQ-v2: ``(H - 3) // 2 + 1 - 2 (depth - 1)`` a side, 35 at 84 px and
            depth 4, about 0.8x the multiply-adds of the padded 42 x 42 maps).
    """

    def __init__(
        self,
        frame_stack: int = 3,
        image_size: int = 84,
        feature_dim: int = 64,
        channels: int = 32,
        depth: int = 4,
        interaction: bool = True,
        interaction_kind: str = "global",
        interaction_layers: list[int] | None = None,
        flow_input: bool = False,
        pool: int = 2,
        paths: str = "both",
        semantic_stride: int = 1,
        padding: int = 1,
        semantic_channels: int | None = None,
    ) -> None:
        super().__init__()
        semantic_width = channels if semantic_channels is None else semantic_channels
        if (
            frame_stack < 1
            or depth < 1
            or image_size < 4
            or feature_dim < 1
            or channels < 1
            or semantic_width < 1
            or pool < 1
        ):
            raise ValueError(
                f"bad backbone sizes: frame_stack={frame_stack}, depth={depth}, image_size={image_size}, "
                f"feature_dim={feature_dim}, channels={channels}, semantic_channels={semantic_channels}, pool={pool}"
            )
        if paths not in PATHS:
            raise ValueError(f"paths={paths!r}: expected one of {PATHS}")
        if flow_input and paths == "semantic":
            raise ValueError("flow_input=True feeds the motion path, which paths='semantic' leaves out")
        if interaction_kind not in INTERACTIONS:
            raise ValueError(f"interaction_kind={interaction_kind!r}: expected one of {sorted(INTERACTIONS)}")
        if semantic_stride not in (1, 2):
            raise ValueError(f"semantic_stride={semantic_stride}: expected 1 or 2")
        if padding not in (0, 1):
            raise ValueError(
                f"padding={padding}: expected 1 (maps aligned with the image) or 0 (valid convs, as DrQ-v2)"
            )
        if semantic_stride > 1 and paths != "motion":
            if depth < 2:
                raise ValueError(
                    f"semantic_stride={semantic_stride} strides the semantic path's second conv; "
                    f"depth={depth} has none (use depth >= 2 or semantic_stride 1)"
                )
            if pool % semantic_stride:
                raise ValueError(
                    f"pool={pool} must be a multiple of semantic_stride={semantic_stride} "
                    "so that both heads see the same grid"
                )
            if interaction and interaction_kind == "gated" and paths == "both":
                raise ValueError(
                    "interaction_kind='gated' exchanges per pixel and needs both paths' maps the same size: "
                    "use semantic_stride 1, or the 'global' or 'attention' exchange"
                )
        self.frame_stack = frame_stack
        self.image_size = image_size
        self.feature_dim = feature_dim
        self.channels = channels
        self.semantic_channels = semantic_width
        self.depth = depth
        self.flow_input = flow_input
        self.paths = paths
        self.semantic_stride = semantic_stride
        self.padding = padding
        self.interaction = interaction and paths == "both"
        layers = (
            list(range(1, depth)) if interaction_layers is None else sorted(set(int(i) for i in interaction_layers))
        )
        if any(i < 0 or i >= depth for i in layers):
            raise ValueError(f"interaction_layers={interaction_layers}: each must be in [0, {depth - 1}]")
        self.interaction_layers = layers if self.interaction else []

        self.semantic_trunk = _trunk(3, semantic_width, depth, semantic_stride, padding) if paths != "motion" else None
        self.motion_trunk = (
            _trunk(3 * frame_stack + (2 if flow_input else 0), channels, depth, 1, padding)
            if paths != "semantic"
            else None
        )
        self.exchange = nn.ModuleDict(
            {str(i): INTERACTIONS[interaction_kind](semantic_width, channels) for i in self.interaction_layers}
        )

        self.map_size = _trunk_size(image_size, depth, 1, padding)  # the motion map's side
        semantic_size = _trunk_size(image_size, depth, semantic_stride, padding) if paths != "motion" else self.map_size
        if min(self.map_size, semantic_size) < 1:
            raise ValueError(
                f"image_size={image_size} is too small for {depth} unpadded 3x3 convs; "
                "use padding=1, fewer layers or larger images"
            )
        # Cells the map the flow decoder reads (the motion map; the semantic one in a semantic-only
        # backbone) lacks on each side of the image-aligned grid of a padded trunk (one per valid
        # conv after the first): the decoder pads them back before upsampling.
        flow_stride = semantic_stride if paths == "semantic" else 1
        flow_size = semantic_size if paths == "semantic" else self.map_size
        self.map_border = (_trunk_size(image_size, depth, flow_stride, 1) - flow_size) // 2
        self.pool = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()
        semantic_pool = pool // semantic_stride if paths != "motion" else pool  # (no semantic path: unused)
        self.semantic_pool = nn.AvgPool2d(semantic_pool) if semantic_pool > 1 else nn.Identity()
        pooled = self.map_size // pool
        semantic_pooled = semantic_size // semantic_pool if paths != "motion" else pooled
        if min(pooled, semantic_pooled) < 1:
            raise ValueError(
                f"pool={pool} is larger than the {min(self.map_size, semantic_size)}px feature map "
                f"of a {image_size}px image"
            )
        self.semantic_head = (
            nn.Sequential(nn.Linear(semantic_width * semantic_pooled**2, feature_dim), nn.LayerNorm(feature_dim))
            if paths != "motion"
            else None
        )
        self.motion_head = (
            nn.Sequential(nn.Linear(channels * pooled**2, feature_dim), nn.LayerNorm(feature_dim))
            if paths != "semantic"
            else None
        )
        self.fuse = nn.Sequential(
            nn.Linear((2 if paths == "both" else 1) * feature_dim, feature_dim), nn.LayerNorm(feature_dim)
        )

    @property
    def flow_channels(self) -> int:
        """Channels of the map the flow decoder reads (the motion map; the semantic one in a semantic-only backbone)."""
        return self.semantic_channels if self.paths == "semantic" else self.channels

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check(self, obs: Tensor, flow: Tensor | None) -> None:
        expected = (3 * self.frame_stack, self.image_size, self.image_size)
        if obs.dim() != 4 or tuple(obs.shape[1:]) != expected:
            raise ValueError(
                f"obs has shape {tuple(obs.shape)}; expected (B, {expected[0]}, {expected[1]}, {expected[2]}) "
                f"(frame_stack={self.frame_stack} RGB frames, oldest first)"
            )
        if self.flow_input:
            if flow is None:
                raise ValueError("this backbone was built with flow_input=True: pass flow (B, 2, H, W) in pixels")
            if tuple(flow.shape) != (obs.shape[0], 2, self.image_size, self.image_size):
                raise ValueError(
                    f"flow has shape {tuple(flow.shape)}; "
                    f"expected ({obs.shape[0]}, 2, {self.image_size}, {self.image_size})"
                )

    def forward_paths(self, obs: Tensor, flow: Tensor | None = None) -> PathOutputs:
        """Run the paths; see :class:`PathOutputs` for shapes. ``flow`` only with ``flow_input``."""
        self._check(obs, flow)
        x = obs.float() / 255.0 - 0.5
        if self.paths != "both":
            return self._one_path(x, flow)
        s = x[:, -3:]
        m = torch.cat([x, flow.float()], dim=1) if self.flow_input and flow is not None else x
        for i in range(self.depth):
            s = F.relu_(self.semantic_trunk[i](s))  # in place: the conv keeps its input, not its output, for backward
            m = F.relu_(self.motion_trunk[i](m))
            if str(i) in self.exchange:
                s, m = self.exchange[str(i)](s, m)
        semantic = self.semantic_head(self.semantic_pool(s).flatten(1))
        motion = self.motion_head(self.pool(m).flatten(1))
        fused = self.fuse(torch.cat([semantic, motion], dim=1))
        return PathOutputs(semantic=semantic, motion=motion, fused=fused, semantic_map=s, motion_map=m)

    def _one_path(self, x: Tensor, flow: Tensor | None) -> PathOutputs:
        if self.paths == "semantic":
            h, trunk, head, pool = x[:, -3:], self.semantic_trunk, self.semantic_head, self.semantic_pool
        else:
            h = torch.cat([x, flow.float()], dim=1) if self.flow_input and flow is not None else x
            trunk, head, pool = self.motion_trunk, self.motion_head, self.pool
        for layer in trunk:
            h = F.relu_(layer(h))
        vector = head(pool(h).flatten(1))
        return PathOutputs(semantic=vector, motion=vector, fused=self.fuse(vector), semantic_map=h, motion_map=h)

    def forward(self, obs: Tensor, flow: Tensor | None = None) -> Tensor:
        """(B, 3k, H, W) pixels in [0, 255] -> (B, feature_dim) float32 fused features."""
        return self.forward_paths(obs, flow).fused

"""Pretraining heads on top of :class:`models.backbone.DualPathBackbone`, and the full model.

* ``clip_image``: semantic vector -> MLP -> (B, clip_dim), aligned to the frame's CLIP image embedding.
* ``clip_caption`` / ``clip_objects``: semantic vector -> MLP -> (B, clip_dim), aligned to the CLIP
  text embeddings of the frame's VLM caption and key-objects text (annotated frames only).
* ``clip_motion``: **motion** vector -> MLP -> (B, clip_dim), aligned to the CLIP text embedding of
  the VLM's motion sentence (which way and how fast things move or turn): the one text a single
  frame cannot show, so it is the motion path's, which sees the whole stack.
* ``flow``: motion feature map -> light conv decoder -> (B, 2, H, W) optical flow between the
  last two frames of the stack, pixels (channel 0 = dx right, 1 = dy down).
* ``reward``: fused vector -> MLP -> (B,) reward of the transition into the current frame.

Only the backbone is needed online; the heads exist for pretraining. Each head's name (a key of
:meth:`PretrainModel.forward`'s dict) is also the name of its pretraining loss term.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from models.backbone import DualPathBackbone
from models.layers import mlp


class FlowDecoder(nn.Module):
    """(B, C, h, w) motion map -> (B, 2, H, W) flow in pixels: two 3x3 convs, bilinear upsampling.

    ``border``: cells the map lacks on each side of the image-aligned grid (an unpadded trunk's,
    :attr:`DualPathBackbone.map_border`); they are filled by replicating the edge first, so that
    upsampling does not stretch the map over the whole image.
    """

    def __init__(self, channels: int, image_size: int, hidden: int = 32, border: int = 0) -> None:
        super().__init__()
        self.image_size = image_size
        self.border = border
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, 2, 3, padding=1)

    def forward(self, motion_map: Tensor) -> Tensor:
        if self.border:
            motion_map = F.pad(motion_map, (self.border,) * 4, mode="replicate")
        x = self.conv2(F.relu(self.conv1(motion_map)))
        return F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)


class PretrainModel(nn.Module):
    """Backbone + every pretraining head; constructed from JSON-able kwargs (checkpointable).

    Args:
        backbone: kwargs of :class:`DualPathBackbone`.
        clip_dim: size D of the CLIP embeddings (image and text) the projection heads predict.
        head_hidden: hidden width of the MLP heads.
    """

    def __init__(self, backbone: dict[str, Any], clip_dim: int, head_hidden: int = 256) -> None:
        super().__init__()
        self.backbone = DualPathBackbone(**backbone)
        self.clip_dim = clip_dim
        d = self.backbone.feature_dim
        self.clip_image = mlp(d, head_hidden, clip_dim)
        self.clip_caption = mlp(d, head_hidden, clip_dim)
        self.clip_objects = mlp(d, head_hidden, clip_dim)
        self.flow = FlowDecoder(self.backbone.flow_channels, self.backbone.image_size, border=self.backbone.map_border)
        self.reward = mlp(d, head_hidden, 1)
        # Built last, so the heads before it draw the same initial weights as before it existed:
        # with weight_clip_motion 0 a run trains to the same bytes as one without this head.
        self.clip_motion = mlp(d, head_hidden, clip_dim)

    def forward(self, obs: Tensor, flow: Tensor | None = None) -> dict[str, Tensor]:
        """Every head's prediction (float32), plus ``fused`` (B, feature_dim).

        Returns a dict: ``clip_image``, ``clip_caption``, ``clip_objects``, ``clip_motion`` (B, clip_dim);
        ``flow`` (B, 2, H, W) pixels; ``reward`` (B,); ``fused`` (B, feature_dim).
        """
        paths = self.backbone.forward_paths(obs, flow)
        return {
            "clip_image": self.clip_image(paths.semantic),
            "clip_caption": self.clip_caption(paths.semantic),
            "clip_objects": self.clip_objects(paths.semantic),
            "clip_motion": self.clip_motion(paths.motion),
            "flow": self.flow(paths.motion_map),
            "reward": self.reward(paths.fused).squeeze(1),
            "fused": paths.fused,
        }

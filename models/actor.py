"""SAC actor head (tanh-squashed Gaussian over features) and the deployable pixel policy.

* :class:`Actor`: (B, feature_dim) encoder features -> a Gaussian over pre-tanh actions, squashed
  by tanh into [-1, 1]; its log-probability includes the tanh change of variables.
* :class:`PixelPolicy`: encoder + actor in one module, constructible from JSON-able kwargs, so
  :mod:`models.checkpoint` can save and rebuild it. ``act(obs)`` maps a uint8 frame stack to
  deterministic actions; the collect stage's ``checkpoint`` policy loads it.
* :class:`ActorMeta`: the checkpoint's ``meta`` (task, sizes, action repeat), declared once for
  its writer (the finetune stage) and its reader (the collect stage).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.checkpoint import CheckpointError, resolve_class
from models.layers import mlp, orthogonal_init

#: Default encoder of :class:`PixelPolicy`: the pretrained dual-path backbone.
DEFAULT_ENCODER = "models.backbone:DualPathBackbone"


class Actor(nn.Module):
    """Squashed-Gaussian policy head.

    Args:
        feature_dim: size of the encoder features it reads.
        action_dim: A, the number of action dimensions (actions live in [-1, 1]^A).
        hidden_dim, hidden_depth: MLP width and number of hidden layers.
        log_std_min, log_std_max: the pre-tanh log standard deviation is squashed into this range.
    """

    def __init__(
        self,
        feature_dim: int,
        action_dim: int,
        hidden_dim: int = 256,
        hidden_depth: int = 2,
        log_std_min: float = -10.0,
        log_std_max: float = 2.0,
    ) -> None:
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


@dataclass(frozen=True)
class ActorMeta:
    """The declaration of an actor checkpoint's ``meta`` (in its ``config.json``): what the finetune
    stage writes beside a :class:`PixelPolicy` and what the collect stage's ``checkpoint`` policy
    reads back to drive an environment with it.

    Attributes:
        task: the environment the actor was trained on (``domain-task`` or a gymnasium id).
        action_dim: A, the size of ``act``'s output.
        frame_stack: k, frames per observation (``act`` takes 3k channels, oldest frame first).
        image_size: H = W of the frames, pixels.
        action_repeat: simulator steps per agent step during training.
        camera, render_mode: the rendering it was trained with (None: not recorded).
    """

    task: str
    action_dim: int
    frame_stack: int
    image_size: int
    action_repeat: int
    camera: int | str | None = None
    render_mode: str | None = None

    #: Keys a reader cannot do without, in the order errors list them.
    REQUIRED: ClassVar[tuple[str, ...]] = ("task", "action_dim", "frame_stack", "image_size", "action_repeat")

    def to_meta(self, **provenance: Any) -> dict[str, Any]:
        """The ``meta`` dict to save: these fields plus any JSON-able ``provenance`` keys."""
        clash = set(provenance) & {f.name for f in fields(self)}
        if clash:
            raise ValueError(f"provenance keys {sorted(clash)} would overwrite ActorMeta fields")
        return {**asdict(self), **provenance}

    @classmethod
    def missing_keys(cls, meta: Mapping[str, Any]) -> list[str]:
        """The :attr:`REQUIRED` keys ``meta`` lacks (empty when it is an actor checkpoint's meta)."""
        return [k for k in cls.REQUIRED if k not in meta]

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> ActorMeta:
        """Parse a checkpoint's ``meta``; extra (provenance) keys are ignored.

        Raises:
            CheckpointError: a required key is missing or not a number where one is expected.
        """
        missing = cls.missing_keys(meta)
        if missing:
            raise CheckpointError(
                f"the meta lacks {', '.join(missing)}; expected an actor checkpoint written by the finetune stage"
            )
        try:
            return cls(
                task=str(meta["task"]),
                action_dim=int(meta["action_dim"]),
                frame_stack=int(meta["frame_stack"]),
                image_size=int(meta["image_size"]),
                action_repeat=int(meta["action_repeat"]),
                camera=meta.get("camera"),
                render_mode=meta.get("render_mode"),
            )
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"the meta has a malformed size ({exc}); expected an actor checkpoint written by the finetune stage"
            ) from None


class PixelPolicy(nn.Module):
    """Encoder + actor: a uint8 frame stack in, deterministic actions in [-1, 1] out.

    Args:
        encoder_config: kwargs of the encoder class (JSON-able).
        actor_config: kwargs of :class:`Actor` (JSON-able).
        encoder_class: ``'package.module:ClassName'`` of the encoder, one that
            :func:`models.checkpoint.resolve_class` allows; it must expose ``feature_dim`` and map
            (B, 3k, H, W) pixels in [0, 255] to (B, feature_dim).
    """

    def __init__(
        self, encoder_config: dict[str, Any], actor_config: dict[str, Any], encoder_class: str = DEFAULT_ENCODER
    ) -> None:
        super().__init__()
        self.encoder = resolve_class(encoder_class)(**encoder_config)
        self.actor = Actor(**actor_config)

    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        """(B, 3 * frame_stack, H, W) uint8 (oldest frame first) -> (B, A) float32 actions in [-1, 1]."""
        return self.actor.deterministic(self.encoder(obs))

    def forward(self, obs: Tensor) -> Tensor:
        return self.act(obs)

"""The backbones an evaluation compares: the pretrained one, random initialisations of its
architecture, and any other checkpoint given by path; and their frozen features of frames.

A backbone is checked against each task before any work: its image size and frame stack, and the
observation facts its metadata records (:class:`pipeline.sim.observation.ObservationMeta`: action
repeat, camera, render mode) must be what the task's evaluation uses. A mismatch is an error
naming both values unless ``evaluate.allow_mismatch`` turns it into a warning, which the outputs
record. A checkpoint that records no facts (older than the contract) is checked on size and stack only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.collect.envs.wrappers import stack_frames
from pipeline.common.errors import UserError
from pipeline.evaluate.seeding import derive_seed
from pipeline.finetune.encoder import EncoderSpec, build_encoder, read_spec
from pipeline.sim.observation import ObservationMeta

log = logging.getLogger(__name__)


class MismatchError(UserError):
    """A backbone expects observations other than those the evaluation would give it."""


@dataclass
class Backbone:
    """One frozen encoder under comparison.

    Attributes:
        name: ``pretrained``, ``random-<i>`` or ``checkpoint-<i>`` (a label in every table).
        kind: ``pretrained`` | ``random`` | ``checkpoint``.
        spec: where it came from and the observation it takes.
        module: the encoder in eval mode, gradients off.
        warnings: mismatches allowed by ``allow_mismatch`` (recorded in the outputs).
    """

    name: str
    kind: str
    spec: EncoderSpec
    module: nn.Module
    warnings: list[str] = field(default_factory=list)

    @property
    def feature_dim(self) -> int:
        return int(self.module.feature_dim)

    def provenance(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "folder": str(self.spec.folder),
            "weights_sha256": self.spec.sha256,
            "warnings": self.warnings,
        }

    @torch.no_grad()
    def features(self, stacks: np.ndarray, batch: int = 64) -> np.ndarray:
        """(N, 3k, H, W) uint8 stacks -> (N, feature_dim) float32 features, ``batch`` at a time."""
        device = next(self.module.parameters()).device
        out = [
            self.module(torch.as_tensor(stacks[i : i + batch], device=device)).float().cpu().numpy()
            for i in range(0, len(stacks), batch)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.feature_dim), np.float32)

    def episode_features(self, frames: np.ndarray, batch: int = 64) -> np.ndarray:
        """(T+1, H, W, 3) uint8 frames of one episode -> (T+1, feature_dim): the features the agent
        would see at each frame (stacks padded with the first frame at the episode start)."""
        n = len(frames)
        steps = np.arange(n)
        return self.features(stack_frames(frames, steps, self.spec.frame_stack, steps, channels_last=True), batch)


def _freeze(module: nn.Module, device: torch.device) -> nn.Module:
    return module.to(device).eval().requires_grad_(False)


def load_backbones(
    pretrained: str | Path, *, random_inits: int, checkpoints: list[str], seed: int, device: torch.device
) -> list[Backbone]:
    """The pretrained backbone, ``random_inits`` random initialisations of its architecture
    (seeded from ``seed``), and every extra checkpoint, frozen on ``device``."""
    spec = read_spec(pretrained)
    backbones = [Backbone("pretrained", "pretrained", spec, _freeze(build_encoder(spec, "pretrained"), device))]
    for i in range(random_inits):
        torch.manual_seed(derive_seed(seed, "random_init", index=i))
        backbones.append(Backbone(f"random-{i}", "random", spec, _freeze(build_encoder(spec, "scratch"), device)))
    for i, path in enumerate(checkpoints):
        other = read_spec(path)
        backbones.append(
            Backbone(f"checkpoint-{i}", "checkpoint", other, _freeze(build_encoder(other, "pretrained"), device))
        )
    return backbones


def load_one(name: str, pretrained: str | Path, *, seed: int, device: torch.device) -> Backbone:
    """One backbone by its label: ``pretrained`` (the folder's weights), ``random-<i>`` (its
    architecture, seeded as :func:`load_backbones` seeds it) or ``checkpoint-<i>`` whose folder
    is ``pretrained`` itself."""
    spec = read_spec(pretrained)
    if name.startswith("random-"):
        torch.manual_seed(derive_seed(seed, "random_init", index=int(name.split("-", 1)[1])))
        return Backbone(name, "random", spec, _freeze(build_encoder(spec, "scratch"), device))
    return Backbone(
        name,
        "checkpoint" if name.startswith("checkpoint-") else "pretrained",
        spec,
        _freeze(build_encoder(spec, "pretrained"), device),
    )


def check_backbone(
    backbone: Backbone,
    task: str,
    *,
    image_size: int,
    frame_stack: int,
    action_repeat: int,
    allow_mismatch: bool,
    camera: int | str | None = None,
    render_mode: str | None = None,
) -> None:
    """Refuse (or, with ``allow_mismatch``, warn about and record) a backbone that does not fit the task.

    ``image_size`` (pixels) is what the evaluation renders and ``frame_stack`` the frames per
    observation it stacks, checked against the backbone's architecture. ``action_repeat``,
    ``camera`` and ``render_mode`` (None: unchecked) are checked against the facts the
    checkpoint records of its pretraining data, where it records them; a random initialisation
    was pretrained on nothing, so only its architecture is checked.
    """
    problems = []
    if backbone.spec.image_size != image_size:
        problems.append(f"image size: backbone {backbone.spec.image_size} px, evaluation {image_size} px")
    if backbone.spec.frame_stack != frame_stack:
        problems.append(f"frame stack: backbone {backbone.spec.frame_stack} frames, evaluation {frame_stack}")
    recorded = ObservationMeta.read(backbone.spec.folder) if backbone.kind != "random" else None
    if recorded is not None:
        problems += recorded.mismatches(
            task, who="evaluation", action_repeat=action_repeat, camera=camera, render_mode=render_mode
        )
    if not problems:
        return
    message = f"backbone {backbone.name} ({backbone.spec.folder}) does not match task {task}: " + "; ".join(problems)
    if not allow_mismatch:
        raise MismatchError(
            message + ". Pretrain on data collected like this evaluation "
            "(collect.action_repeat, collect.camera, collect.render_mode), "
            "or set evaluate.action_repeat / evaluate.camera / evaluate.render_mode to match it, "
            "or set evaluate.allow_mismatch: true to compare anyway (recorded in the outputs)"
        )
    log.warning("%s (allowed by evaluate.allow_mismatch; recorded)", message)
    backbone.warnings.append(message)

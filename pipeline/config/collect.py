"""The ``collect`` params section: which environments, how many episodes, what is rendered."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.config.base import Section


class PolicyParams(Section):
    """The behaviour policy that drives the environment while frames are recorded."""

    kind: Literal["random", "noisy", "checkpoint"] = Field(
        "random",
        description="'random': uniform in the action box; 'noisy': temporally correlated (Ornstein-Uhlenbeck) exploration; 'checkpoint': an actor saved by the finetune stage.",
    )
    checkpoint: str | None = Field(None, description="Path of the actor checkpoint when kind is 'checkpoint'.")
    noise_scale: float = Field(0.3, ge=0.0, le=10.0, description="Std of the exploration noise, in units of the action range.")
    noise_theta: float = Field(0.15, ge=0.0, le=1.0, description="Mean reversion rate of the OU noise per step ('noisy').")


class CollectParams(Section):
    """Parameters of the collect stage (one DVC stage per task)."""

    tasks: list[str] = Field(
        ["cartpole-swingup"],
        min_length=1,
        description="dm_control 'domain-task' names or gymnasium MuJoCo ids (e.g. HalfCheetah-v5). Drives dvc.yaml's foreach; not a tracked param of each stage.",
    )
    episodes_per_task: int = Field(4, ge=1, le=100_000, description="Episodes recorded per task.")
    episode_steps: int = Field(100, ge=2, le=100_000, description="Agent steps per episode (after action repeat); reaching it is a time-limit truncation.")
    action_repeat: int = Field(2, ge=1, le=100, description="Simulator steps per agent step; only the last frame of each repeat is rendered.")
    image_size: int = Field(84, ge=16, le=1024, description="Rendered frames are image_size x image_size RGB.")
    camera: int | str = Field(0, description="Camera id or name (dm_control); gymnasium uses its own tracking camera when 0.")
    render_mode: Literal["fast", "faithful"] = Field(
        "fast",
        description="'fast' switches off MuJoCo shadows, reflections and skybox (about 6x faster on CPU); 'faithful' renders the scene as designed.",
    )
    depth: bool = Field(True, description="Record a z-depth image (metres) per frame; needed by the simulator flow backend.")
    segmentation: bool = Field(True, description="Record per-pixel geom ids per frame; needed by simulator flow and annotation.")
    policy: PolicyParams = PolicyParams()
    seed: int = Field(0, ge=0, description="Base seed; episode i of a task uses a seed derived from (seed, task, i).")
    workers: int = Field(1, ge=1, le=256, description="Worker processes; results do not depend on it.")
    preview_episodes: int = Field(1, ge=0, description="Episodes per task written as a GIF preview for people to look at.")

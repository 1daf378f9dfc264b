"""The ``collect`` params section: which environments, how many episodes, what is rendered."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from pipeline.config.base import Bool, Float, Int, Section, Seed
from pipeline.sim.benchmark import action_repeat_for


class PolicyParams(Section):
    """The behaviour policy that drives the environment while frames are recorded."""

    kind: Literal["random", "noisy", "checkpoint"] = Field(
        "noisy",
        description="'random': uniform in the action box; 'noisy': temporally correlated (Ornstein-Uhlenbeck) "
        "exploration; 'checkpoint': an actor saved by the finetune stage.",
    )
    checkpoint: str | None = Field(
        None, description="Folder of the actor checkpoint (finetune stage output) when kind is 'checkpoint'."
    )
    noise_scale: Float = Field(
        0.3,
        ge=0.0,
        le=10.0,
        description="Stationary std of the OU noise ('noisy'), in normalised action units "
        "(the action box mapped to [-1, 1]).",
    )
    noise_theta: Float = Field(
        0.15,
        gt=0.0,
        le=1.0,
        description="Mean reversion rate of the OU noise per agent step ('noisy'); 1 gives white noise.",
    )

    @model_validator(mode="after")
    def _checkpoint_needs_path(self) -> PolicyParams:
        if self.kind == "checkpoint" and not self.checkpoint:
            raise ValueError(
                "kind 'checkpoint' needs checkpoint: the folder of an actor saved by the finetune stage "
                "(e.g. data/finetune/actor)"
            )
        return self


class CollectParams(Section):
    """Parameters of the collect stage (one DVC stage per task)."""

    tasks: list[str] = Field(
        ["cartpole-swingup", "cheetah-run"],
        min_length=1,
        description="dm_control 'domain-task' names or gymnasium MuJoCo ids (e.g. HalfCheetah-v5). "
        "Drives dvc.yaml's foreach; not a tracked param of each stage.",
    )
    episodes_per_task: Int = Field(4, ge=1, le=100_000, description="Episodes recorded per task.")
    episode_steps: Int = Field(
        100,
        ge=2,
        le=100_000,
        description="Agent steps per episode; reaching it is a time-limit truncation. "
        "An episode stores episode_steps + 1 rendered frames "
        "and spans episode_steps x action_repeat environment frames (benchmark counting).",
    )
    action_repeat: dict[str, Annotated[Int, Field(ge=1, le=100)]] = Field(
        {},
        description="Per-task action repeat overrides (simulator steps per agent step; only the last frame of each "
        "repeat is rendered, so it is the frame gap the backbone learns). Unset tasks use the PlaNet/DrQ benchmark "
        "value that finetune and evaluate use online "
        "(pipeline.sim.benchmark: cartpole 8; reacher, cheetah, ball_in_cup 4; finger, walker 2; others 2).",
    )
    image_size: Int = Field(84, ge=16, le=1024, description="Rendered frames are image_size x image_size RGB.")
    camera: Int | str = Field(
        0,
        description="Model camera id (>= 0) or name; -1 is the free camera (gymnasium: the env's default view). "
        "Camera 0 of a gymnasium model without cameras means that default view; "
        "gymnasium locomotion models' camera 0 is their tracking camera.",
    )
    render_mode: Literal["fast", "faithful"] = Field(
        "fast",
        description="'fast' switches off MuJoCo shadows, reflections and skybox (about 6x faster on CPU); "
        "'faithful' renders the scene as designed.",
    )
    depth: Bool = Field(
        True, description="Record a z-depth image (metres) per frame; needed by the simulator flow backend."
    )
    segmentation: Bool = Field(
        True, description="Record per-pixel geom ids per frame; needed by simulator flow and annotation."
    )
    policy: PolicyParams = PolicyParams()
    seed: Seed = Field(0, description="Base seed; episode i of a task uses a seed derived from (seed, task, i).")
    workers: Int = Field(
        2,
        ge=1,
        le=256,
        description="Worker processes (1: collect in the calling process); the output bytes do not depend on it.",
    )
    preview_episodes: Int = Field(
        1,
        ge=0,
        le=100,
        description="Episodes per task shown in preview.gif (RGB | depth | segmentation side by side) "
        "for people to look at; 0: no preview.",
    )

    @field_validator("action_repeat", mode="before")
    @classmethod
    def _per_task(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, dict):
            task = (info.data.get("tasks") or ["cartpole-swingup"])[0]
            raise ValueError(
                f"collect.action_repeat is per task: {{}} for every task's benchmark value "
                "(cartpole 8; reacher, cheetah, ball_in_cup 4; "
                f"finger, walker 2; others 2) or {{task: repeat}} overrides such as {{{task}: {value!r}}}"
            )
        return value

    @model_validator(mode="after")
    def _known_tasks(self) -> CollectParams:
        unknown = sorted(set(self.action_repeat) - set(self.tasks))
        if unknown:
            raise ValueError(
                f"action_repeat names tasks not in collect.tasks: {unknown}; "
                f"use names from collect.tasks {self.tasks} (or add the task there)"
            )
        return self

    def action_repeat_for(self, task: str) -> int:
        """Simulator steps per agent step of ``task``'s episodes: its override, else the benchmark value."""
        return action_repeat_for(task, self.action_repeat)

    @field_validator("camera")
    @classmethod
    def _camera_id(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < -1:
            raise ValueError("a camera id is >= 0, or -1 for the free camera")
        if isinstance(value, str) and not value:
            raise ValueError("a camera name must not be empty")
        return value

"""The ``finetune`` params section: online SAC from pixels (DrQ-style) on a dm_control task.

Frames are environment frames counted after action repeat (one agent step = ``action_repeat``
frames), as the DeepMind Control literature counts them. The defaults run a short fine-tune
(minutes on 2 CPU cores); docs/ARCHITECTURE.md gives the full-scale (100k-frame, GPU) values.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline.config.base import Bool, DeviceName, Float, Int, Seed
from pipeline.config.sac import SACParams
from pipeline.sim.benchmark import action_repeat_for


class FinetuneParams(SACParams):
    """The pixel agent: the shared SAC hyperparameters (:class:`SACParams`) plus the encoder, augmentation, n-step
    and schedule."""

    # --- environment -------------------------------------------------------------------------
    task: str = Field(
        "cartpole-swingup",
        description="dm_control 'domain-task' trained online (the collect stage's make_env builds it).",
    )
    action_repeat: Int | None = Field(
        None,
        ge=1,
        le=100,
        description="Simulator steps per agent step; the action is held and rewards are summed. "
        "null: the PlaNet/DrQ benchmark value for task (pipeline.sim.benchmark, as collect and evaluate use: "
        "cartpole 8; reacher, cheetah, ball_in_cup 4; finger, walker 2; others 2), "
        "filled in when the params are read, so the section always holds a number.",
    )
    episode_frames: Int = Field(
        1000,
        ge=1,
        description="Environment frames per episode (the dm_control time limit is 1000); "
        "reaching it is a truncation, which bootstraps.",
    )
    camera: Int | str = Field(0, description="Camera id or name the agent sees through.")
    render_mode: Literal["fast", "faithful"] = Field(
        "fast",
        description="'fast' switches off shadows, reflections and skybox (about 6x faster on CPU); "
        "use the mode the backbone was pretrained on.",
    )
    allow_mismatch: Bool = Field(
        False,
        description="A backbone whose recorded observation facts (action repeat for task, image size, camera, "
        "render mode, frame stack) differ from this run's is refused before any work; "
        "true trains anyway with a loud warning, recorded in the metrics and the actor's metadata.",
    )

    # --- encoder -----------------------------------------------------------------------------
    encoder_init: Literal["pretrained", "scratch", "frozen"] = Field(
        "pretrained",
        description="'pretrained': start from the pretrain checkpoint and fine-tune it with the critic's loss; "
        "'scratch': same architecture and config, random init; 'frozen': pretrained, never updated.",
    )

    # --- schedule ----------------------------------------------------------------------------
    frames: Int = Field(2000, ge=1, description="Environment frames (after action repeat) to train for.")
    seed_frames: Int = Field(
        1000, ge=0, description="Frames of uniform-random actions before the policy acts and updates start."
    )

    # --- replay ------------------------------------------------------------------------------
    n_step: Int = Field(
        1,
        ge=1,
        le=20,
        description="Steps of the n-step return (cut short at the end of an episode); DrQ uses 1, DrQ-v2 3.",
    )
    aug_pad: Int = Field(
        4,
        ge=0,
        le=64,
        description="Random-shift augmentation: pad by this many pixels (edge replicate) "
        "and crop back at a random offset; 0 disables it.",
    )

    # --- networks ----------------------------------------------------------------------------

    # --- optimisation ------------------------------------------------------------------------
    encoder_lr: Float | None = Field(
        None,
        gt=0,
        le=1.0,
        description="Adam learning rate of the encoder (trained by the critic's loss); null: same as lr.",
    )

    # --- evaluation, checkpoints -------------------------------------------------------------
    eval_every_frames: Int = Field(
        1000,
        ge=1,
        description="Evaluate the deterministic policy every this many frames (and at frame 0 and at the end).",
    )
    eval_episodes: Int = Field(
        2, ge=1, description="Episodes per evaluation; mean and spread of their returns are reported."
    )
    video: Bool = Field(True, description="Write a GIF of the first episode of the final evaluation.")
    checkpoint_every_frames: Int = Field(
        1000,
        ge=1,
        description="Write a resumable checkpoint (at the next episode end) every this many frames, and at the end.",
    )
    checkpoint_dir: str = Field(
        "data/cache/finetune",
        description="Where resumable checkpoints live (outside the DVC output, so a rerun resumes); "
        "one sub-folder per run configuration.",
    )

    device: DeviceName = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    threads: Int = Field(
        0,
        ge=0,
        le=1024,
        description="torch CPU threads (0: torch's default, one per core); "
        "1 is far faster when other processes share the cores.",
    )
    seed: Seed = Field(0, description="Seeds the networks, exploration, replay sampling and environment resets.")

    @model_validator(mode="before")
    @classmethod
    def _benchmark_action_repeat(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("action_repeat") is None:
            task = data.get("task", cls.model_fields["task"].default)
            if isinstance(task, str):  # a bad task type is reported by the field's own validation
                data = {**data, "action_repeat": action_repeat_for(task)}
        return data

    @model_validator(mode="after")
    def _check(self) -> FinetuneParams:
        if self.episode_frames < self.action_repeat:
            raise ValueError(
                f"episode_frames ({self.episode_frames}) must be at least action_repeat ({self.action_repeat}): "
                "an episode needs one agent step"
            )
        return self

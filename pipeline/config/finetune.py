"""The ``finetune`` params section: online SAC from pixels (DrQ-style) on a dm_control task.

Frames are environment frames counted after action repeat (one agent step = ``action_repeat``
frames), as the DeepMind Control literature counts them. The defaults run a short fine-tune
(minutes on 2 CPU cores); docs/ARCHITECTURE.md gives the full-scale (100k-frame, GPU) values.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.config.base import Bool, DeviceName, Float, Int, Section, Seed


class FinetuneParams(Section):
    # --- environment -------------------------------------------------------------------------
    task: str = Field("cartpole-swingup", description="dm_control 'domain-task' trained online (the collect stage's make_env builds it).")
    action_repeat: Int = Field(8, ge=1, le=100, description="Simulator steps per agent step; the action is held and rewards are summed (DrQ: 8 on cartpole).")
    episode_frames: Int = Field(1000, ge=1, description="Environment frames per episode (the dm_control time limit is 1000); reaching it is a truncation, which bootstraps.")
    camera: Int | str = Field(0, description="Camera id or name the agent sees through.")
    render_mode: Literal["fast", "faithful"] = Field("fast", description="'fast' switches off shadows, reflections and skybox (about 6x faster on CPU); use the mode the backbone was pretrained on.")

    # --- encoder -----------------------------------------------------------------------------
    encoder_init: Literal["pretrained", "scratch", "frozen"] = Field(
        "pretrained",
        description="'pretrained': start from the pretrain checkpoint and fine-tune it with the critic's loss; 'scratch': same architecture and config, random init; 'frozen': pretrained, never updated.",
    )

    # --- schedule ----------------------------------------------------------------------------
    frames: Int = Field(2000, ge=1, description="Environment frames (after action repeat) to train for.")
    seed_frames: Int = Field(1000, ge=0, description="Frames of uniform-random actions before the policy acts and updates start.")
    updates_per_step: Int = Field(1, ge=1, le=64, description="Gradient updates per agent step once seed_frames are done (replay ratio).")

    # --- replay ------------------------------------------------------------------------------
    replay_capacity: Int = Field(100_000, ge=64, description="Frames kept in the replay buffer (each stored once as uint8; stacks are built at sampling time).")
    batch_size: Int = Field(32, ge=1, le=65_536, description="Transitions per update (DrQ: 512, DrQ-v2: 256).")
    n_step: Int = Field(1, ge=1, le=20, description="Steps of the n-step return (cut short at the end of an episode); DrQ uses 1, DrQ-v2 3.")
    gamma: Float = Field(0.99, gt=0.0, le=1.0, description="Discount per agent step.")
    aug_pad: Int = Field(4, ge=0, le=64, description="Random-shift augmentation: pad by this many pixels (edge replicate) and crop back at a random offset; 0 disables it.")

    # --- networks ----------------------------------------------------------------------------
    hidden_dim: Int = Field(256, ge=1, le=65_536, description="Width of the actor's and each critic's MLP (DrQ: 1024).")
    hidden_depth: Int = Field(2, ge=0, le=16, description="Hidden layers of those MLPs.")
    log_std_min: Float = Field(-10.0, description="Lower bound of the actor's log standard deviation (pre-tanh Gaussian).")
    log_std_max: Float = Field(2.0, description="Upper bound of the actor's log standard deviation.")

    # --- optimisation ------------------------------------------------------------------------
    lr: Float = Field(1e-3, gt=0, le=1.0, description="Adam learning rate of the actor and the critics (DrQ: 1e-3).")
    encoder_lr: Float | None = Field(None, gt=0, le=1.0, description="Adam learning rate of the encoder (trained by the critic's loss); null: same as lr.")
    alpha_lr: Float = Field(1e-3, gt=0, le=1.0, description="Adam learning rate of the log temperature.")
    init_temperature: Float = Field(0.1, gt=0, description="Initial entropy temperature alpha (DrQ: 0.1); learned towards the target entropy -action_dim.")
    tau: Float = Field(0.01, gt=0.0, le=1.0, description="Soft-update rate of the target critics: target <- tau * online + (1 - tau) * target.")
    actor_update_every: Int = Field(2, ge=1, description="Update the actor and the temperature every k-th update (DrQ: 2).")
    target_update_every: Int = Field(2, ge=1, description="Soft-update the target critics every k-th update (DrQ: 2).")

    # --- evaluation, checkpoints -------------------------------------------------------------
    eval_every_frames: Int = Field(1000, ge=1, description="Evaluate the deterministic policy every this many frames (and at frame 0 and at the end).")
    eval_episodes: Int = Field(2, ge=1, description="Episodes per evaluation; mean and spread of their returns are reported.")
    video: Bool = Field(True, description="Write a GIF of the first episode of the final evaluation.")
    checkpoint_every_frames: Int = Field(1000, ge=1, description="Write a resumable checkpoint (at the next episode end) every this many frames, and at the end.")
    checkpoint_dir: str = Field("data/cache/finetune", description="Where resumable checkpoints live (outside the DVC output, so a rerun resumes); one sub-folder per run configuration.")

    device: DeviceName = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    threads: Int = Field(0, ge=0, le=1024, description="torch CPU threads (0: torch's default, one per core); 1 is far faster when other processes share the cores.")
    seed: Seed = Field(0, description="Seeds the networks, exploration, replay sampling and environment resets.")

    @model_validator(mode="after")
    def _check(self) -> "FinetuneParams":
        if self.log_std_min >= self.log_std_max:
            raise ValueError(f"log_std_min ({self.log_std_min}) must be below log_std_max ({self.log_std_max})")
        if self.episode_frames < self.action_repeat:
            raise ValueError(f"episode_frames ({self.episode_frames}) must be at least action_repeat ({self.action_repeat}): an episode needs one agent step")
        return self

"""SAC hyperparameters shared by every agent of the project: the finetune stage's pixel agent and the
evaluate stage's state and frozen-feature agents (:class:`pipeline.finetune.sac.SAC` reads them).
Defaults are DrQ's where DrQ sets them; each section overrides what differs (batch size, width)."""

from __future__ import annotations

from pydantic import Field, model_validator

from pipeline.config.base import Float, Int, Section


class SACParams(Section):
    """Replay ratio, replay size, batch, discount, network widths, optimiser and target settings."""

    updates_per_step: Int = Field(
        1, ge=1, le=64, description="Gradient updates per agent step once seed_frames are done (replay ratio)."
    )
    replay_capacity: Int = Field(
        100_000,
        ge=64,
        description="Frames kept in the replay buffer (each stored once as uint8; stacks are built at sampling time).",
    )
    batch_size: Int = Field(32, ge=1, le=65_536, description="Transitions per update (DrQ: 512, DrQ-v2: 256).")
    gamma: Float = Field(0.99, gt=0.0, le=1.0, description="Discount per agent step.")
    hidden_dim: Int = Field(256, ge=1, le=65_536, description="Width of the actor's and each critic's MLP (DrQ: 1024).")
    hidden_depth: Int = Field(2, ge=0, le=16, description="Hidden layers of those MLPs.")
    log_std_min: Float = Field(
        -10.0, description="Lower bound of the actor's log standard deviation (pre-tanh Gaussian)."
    )
    log_std_max: Float = Field(2.0, description="Upper bound of the actor's log standard deviation.")
    lr: Float = Field(1e-3, gt=0, le=1.0, description="Adam learning rate of the actor and the critics (DrQ: 1e-3).")
    alpha_lr: Float = Field(1e-3, gt=0, le=1.0, description="Adam learning rate of the log temperature.")
    init_temperature: Float = Field(
        0.1,
        gt=0,
        description="Initial entropy temperature alpha (DrQ: 0.1); learned towards the target entropy -action_dim.",
    )
    tau: Float = Field(
        0.01,
        gt=0.0,
        le=1.0,
        description="Soft-update rate of the target critics: target <- tau * online + (1 - tau) * target.",
    )
    actor_update_every: Int = Field(
        2, ge=1, description="Update the actor and the temperature every k-th update (DrQ: 2)."
    )
    target_update_every: Int = Field(2, ge=1, description="Soft-update the target critics every k-th update (DrQ: 2).")

    @model_validator(mode="after")
    def _check_log_std(self) -> SACParams:
        if self.log_std_min >= self.log_std_max:
            raise ValueError(f"log_std_min ({self.log_std_min}) must be below log_std_max ({self.log_std_max})")
        return self

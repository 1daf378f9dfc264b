"""The ``evaluate`` params section: does a backbone help control? Probe and SAC arms, with seeds and CIs.

Frames are environment frames counted after action repeat (one agent step = ``action_repeat``
frames), as DrQ / CURL / PlaNet count them. The defaults are a small run that fits the default
``dvc repro`` on 2 CPU cores; README.md gives the study profile (>= 3 tasks x >= 3 seeds at 100k
frames) as one ``dvc exp run -S ...`` line.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.config.base import Bool, Float, Int, Section, Seed
from pipeline.config.sac import SACParams
from pipeline.sim.benchmark import action_repeat_for


class AgentParams(SACParams):
    """SAC hyperparameters of the vector arms (state and frozen features); read by :class:`pipeline.finetune.sac.SAC`.

    The vector arms have no augmentation (``aug_pad`` is fixed at 0): a frozen encoder's
    features are computed once per frame, so a random shift of the pixels could not reach the
    replay buffer's stored features, and the state arm has no pixels at all. Defaults as SAC
    from state: batch 256, width 256.
    """

    batch_size: Int = Field(256, ge=1, le=65_536, description="Transitions per update (SAC from state: 256).")

    # SAC reads these; the vector arms fix them (no pixels to shift, a fixed encoder).
    @property
    def aug_pad(self) -> int:
        return 0

    @property
    def encoder_lr(self) -> None:
        return None

    @property
    def n_step(self) -> int:
        return 1


class ProbeParams(Section):
    """Probe from frozen features to the task's observation vector, k-fold by episode (ridge by default)."""

    model: Literal["ridge", "mlp"] = Field(
        "ridge",
        description="'ridge': linear, the penalty chosen per fold from alphas "
        "(the protocol's probe: is the state linearly in the features). "
        "'mlp': one hidden layer of 256 ReLU units with fixed settings (pipeline.common.probe.MLP; alphas unused): "
        "is it in the features at all.",
    )

    folds: Int = Field(
        5,
        ge=2,
        le=100,
        description="Folds of the episode-grouped cross-validation (each episode is in exactly one test fold).",
    )
    alphas: list[Float] = Field(
        [0.1, 1.0, 10.0, 100.0, 1000.0],
        min_length=1,
        description="Ridge penalties tried; one is chosen per fold by an inner episode-grouped CV "
        "on that fold's training episodes only.",
    )
    bootstrap: Int = Field(
        2000, ge=100, le=100_000, description="Bootstrap resamples (of held-out episodes) for the 95% CIs."
    )
    max_frames_per_task: Int = Field(
        20_000, ge=10, description="Frames per task kept for the probe (evenly strided) to bound its cost."
    )


class EvaluateParams(Section):
    # --- tasks and held-out data -----------------------------------------------------------
    tasks: list[str] = Field(
        ["cartpole-swingup", "cheetah-run"],
        min_length=1,
        description="Tasks evaluated (dm_control 'domain-task' or gymnasium MuJoCo ids).",
    )
    action_repeat: dict[str, Int] = Field(
        {},
        description="Per-task action repeat overrides; unset tasks use the PlaNet/DrQ benchmark value "
        "(cartpole 8; reacher, cheetah, ball_in_cup 4; finger, walker 2; others 2).",
    )
    episode_frames: Int = Field(
        1000, ge=1, description="Environment frames per RL episode (dm_control's time limit is 1000 frames)."
    )
    heldout_episodes: Int = Field(
        10,
        ge=2,
        description="Held-out episodes per task for the probe, collected by this stage (never seen by pretraining).",
    )
    heldout_frames: Int = Field(
        400, ge=8, description="Environment frames per held-out episode (agent steps = frames / action repeat)."
    )
    heldout_policy_noise: Float = Field(
        0.5,
        ge=0.0,
        le=10.0,
        description="Held-out episodes act with Ornstein-Uhlenbeck noise of this scale around 0 "
        "(in [-1, 1] action units), so states spread.",
    )
    render_mode: Literal["fast", "faithful"] = Field(
        "fast", description="Rendering of the held-out and online frames; use the mode the backbone was pretrained on."
    )
    image_size: Int | None = Field(
        None,
        ge=8,
        le=1024,
        description="Rendered frame size in pixels; null: the pretrained backbone's. "
        "A backbone expecting another size is refused.",
    )
    frame_stack: Int | None = Field(
        None,
        ge=1,
        le=16,
        description="Frames per observation; null: the pretrained backbone's. "
        "A backbone expecting another stack is refused.",
    )
    camera: Int | str = Field(0, description="Camera id or name.")
    seed: Seed = Field(
        1_000_003,
        description="Root seed of this stage (held-out episodes, random inits, SAC seeds); "
        "kept apart from collect.seed's streams by a stream id.",
    )

    # --- backbones compared ----------------------------------------------------------------
    random_inits: Int = Field(
        3,
        ge=0,
        le=64,
        description="Random initialisations of the pretrained backbone's architecture compared against it.",
    )
    frozen_random: Literal["crossed", "paired"] = Field(
        "crossed",
        description="How the frozen arm runs the random initialisations. "
        "'crossed': each init is an arm of `seeds` runs (random_inits x seeds runs); "
        "'paired': one arm 'frozen:random' whose seed s uses init s mod random_inits "
        "(`seeds` runs whose spread covers init and seed; the study profile's choice on 2 cores). "
        "The probe always compares every init.",
    )
    checkpoints: list[str] = Field([], description="Other backbone checkpoints (folders) to compare, by path.")
    allow_mismatch: Bool = Field(
        False,
        description="Turn a backbone/task mismatch (image size, frame stack, action repeat) from an error "
        "into a loud warning recorded in the outputs.",
    )

    # --- arms ------------------------------------------------------------------------------
    arms: list[Literal["probe", "state", "frozen", "finetune"]] = Field(
        ["probe", "state", "frozen"],
        min_length=1,
        description="'probe': ridge probe on held-out episodes; 'state': SAC on the observation vector; "
        "'frozen': SAC on frozen backbone features; "
        "'finetune': pixel SAC (finetune section's agent; GPU-scale, off by default).",
    )
    seeds: Int = Field(1, ge=1, le=64, description="Seeds per RL arm and task (study profile: >= 3).")
    frames: Int = Field(
        2000, ge=1, description="Environment frames (after action repeat) per RL run (published tables: 100000)."
    )
    seed_frames: Int = Field(1000, ge=0, description="Frames of uniform-random actions before updates start.")
    eval_every_frames: Int = Field(
        1000, ge=1, description="Evaluate the deterministic policy every this many frames (and at 0 and at the end)."
    )
    eval_episodes: Int = Field(2, ge=1, description="Episodes per evaluation (study profile: 10).")
    feature_batch: Int = Field(
        64, ge=1, description="Frames per backbone forward when computing features offline (probe)."
    )
    agent: AgentParams = Field(
        default_factory=AgentParams, description="SAC hyperparameters of the state and frozen arms."
    )
    probe: ProbeParams = Field(default_factory=ProbeParams, description="Probe settings.")
    min_final_return: Float = Field(
        -1.0,
        description="The state arm must reach at least this final mean return on every task, or the stage fails "
        "(a non-learning agent invalidates every other arm); -1 disables.",
    )
    cache_dir: str | None = Field(
        "data/cache/evaluate",
        description="Finished RL runs are kept here (one small JSON each) so a stopped evaluation resumes; "
        "a run is reused only when its job, params, weights and code are unchanged. null: off.",
    )
    workers: Int = Field(
        2,
        ge=1,
        le=64,
        description="Processes running RL runs side by side (one torch thread each; on a GPU they share it, "
        "and each renders on its own CPU core); 1: in-process. Results do not depend on it.",
    )
    group_by: Literal["task", "run"] = Field(
        "task",
        description="'task': the vector runs of one arm and task (every seed and backbone) train in one process "
        "as one batched agent, environments in lockstep (pipeline/evaluate/group.py); 'run': one process per run. "
        "Results differ only by float rounding; the grouping is part of each run's cache key.",
    )
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:N]'.")
    threads: Int = Field(0, ge=0, description="torch CPU threads; 0: one per core.")

    @model_validator(mode="after")
    def _check(self) -> EvaluateParams:
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks lists a task twice: {self.tasks}")
        unknown = sorted(set(self.action_repeat) - set(self.tasks))
        if unknown:
            raise ValueError(f"action_repeat names tasks not in evaluate.tasks: {unknown}")
        if any(r < 1 for r in self.action_repeat.values()):
            raise ValueError("action_repeat values must be >= 1")
        short = {t: r for t in self.tasks if (r := action_repeat_for(t, self.action_repeat)) > self.episode_frames}
        if short:
            raise ValueError(
                f"episode_frames ({self.episode_frames}) is below the action repeat of {short}: an episode would "
                "end before its first agent step; raise episode_frames (dm_control's episodes are 1000 frames)"
            )
        return self

"""The ``pretrain`` params section: the dual-path backbone and its training."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.config.base import Bool, DeviceName, Float, Int, Section, Seed


class PretrainParams(Section):
    # The backbone (models/backbone.py); the image size and CLIP dimension come from the dataset.
    frame_stack: Int = Field(3, ge=2, le=16, description="Consecutive RGB frames stacked as the backbone's input.")
    feature_dim: Int = Field(
        64,
        ge=8,
        le=4096,
        description="Size of the fused feature vector the SAC stage consumes (and of each path's vector).",
    )
    channels: Int = Field(
        32,
        ge=4,
        le=1024,
        description="Conv width of the motion path, and of the semantic path unless semantic_channels is set.",
    )
    semantic_channels: Int | None = Field(
        None,
        ge=4,
        le=1024,
        description=(
            "Conv width of the semantic path (null: channels). Fewer channels cut that path's conv cost by "
            "about the square of the ratio; not the default because the probe lost velocity information "
            "(docs/RESULTS.md 1h)."
        ),
    )
    depth: Int = Field(
        4,
        ge=1,
        le=16,
        description=(
            "Conv layers per path (the first has stride 2). 4 by default: 3 is cheaper but lost probe R^2 "
            "(docs/RESULTS.md 1j)."
        ),
    )
    paths: Literal["both", "semantic", "motion"] = Field(
        "both",
        description=(
            "'both': the dual-path design. 'semantic' / 'motion': that path alone (ablation): the one path feeds "
            "every head (CLIP heads and flow decoder alike), so the loss set is unchanged and only the two-path "
            "structure is taken away; no exchange."
        ),
    )
    semantic_stride: Literal[1, 2] = Field(
        1,
        description=(
            "Stride of the semantic path's second conv. 1: both paths at one resolution. 2: the semantic path's "
            "later layers on maps half the motion path's size each way (21 x 21 at 84 px): cheaper, but the probe "
            "lost position information (docs/RESULTS.md 1d). interaction_kind 'gated' needs 1."
        ),
    )
    padding: Literal[0, 1] = Field(
        1,
        description=(
            "Padding of every trunk conv. 1: maps aligned with the image (42 x 42 at 84 px). 0: valid convs, as "
            "DrQ-v2's encoder (35 x 35 at 84 px; the flow decoder pads the lost border back): about 0.8x the "
            "multiply-adds, but cartpole-swingup's probe R^2 dropped (docs/RESULTS.md 1e)."
        ),
    )
    interaction: Bool = Field(
        True, description="Let the semantic and motion paths exchange information (off for ablation)."
    )
    interaction_kind: Literal["gated", "attention", "global"] = Field(
        "global",
        description=(
            "'global': per-channel gated messages from the other path's spatial mean (nearly free); 'gated': "
            "per-pixel gated 1x1-conv feature exchange; 'attention': cross-attention over pooled tokens."
        ),
    )
    flow_input: Bool = Field(
        False,
        description=(
            "Also feed the flow between the last two frames to the motion path (comparison only: the online "
            "agent would need flow too)."
        ),
    )
    head_hidden: Int = Field(256, ge=8, le=8192, description="Hidden width of the projection and reward MLP heads.")
    # Training.
    batch_size: Int = Field(16, ge=1, description="Global batch (split evenly over DDP processes).")
    steps: Int = Field(
        1000,
        ge=1,
        description=(
            "Optimiser steps. 1000 by default, chosen on the pretraining data's own validation loss: at 300 the "
            "CLIP terms were still untrained (docs/RESULTS.md 1b)."
        ),
    )
    validate_every: Int = Field(
        250,
        ge=0,
        description=(
            "Optimiser steps between evaluations of the loss on the validation split (no gradient; the training "
            "trajectory is unchanged), logged as validation/<term> curves and validation_curve in the metrics; "
            "0: at the end only. Choose pretrain.steps where this curve flattens, not on a downstream score."
        ),
    )
    optimizer: Literal["adam", "adamw"] = Field("adam", description="Optimiser.")
    lr: Float = Field(3e-4, gt=0, le=1.0, description="Learning rate.")
    weight_decay: Float = Field(0.0, ge=0, description="Weight decay (decoupled with adamw).")
    grad_clip: Float = Field(0.0, ge=0, description="Clip the global gradient norm to this (0: off).")
    clip_loss: Literal["cosine", "infonce"] = Field(
        "cosine",
        description=(
            "CLIP alignment: 1 - cosine, or multi-positive InfoNCE over the global batch (duplicate targets, such "
            "as the same caption, are positives, not negatives). cosine by default: it needs no negatives, so it "
            "does not depend on the batch size or on how many distinct captions a batch holds."
        ),
    )
    temperature: Float = Field(0.1, gt=0, le=10, description="InfoNCE temperature.")
    centre_clip_targets: Bool = Field(
        True,
        description=(
            "Subtract the train split's mean CLIP embedding per field (stats.json: image, caption, objects, "
            "motion) from the targets and renormalise, before any loss; the means are recorded in the checkpoint "
            "meta. On by default: uncentred CLIP targets of one dataset share one dominant direction, which a "
            "constant prediction matches; false reproduces the raw targets."
        ),
    )
    annotated_per_batch: Int = Field(
        4,
        ge=0,
        description=(
            "Annotated frames every global batch holds at least (topped up from the annotated frames when the "
            "stream has fewer; used only while a text term is on: weight_clip_text or weight_clip_motion > 0; "
            "0: no guarantee). 4 of 16 by default: enough rows for a text term whose mean is not one frame's, "
            "while three quarters of each batch keeps the natural frame mix the image, flow and reward terms see."
        ),
    )
    weight_clip_image: Float = Field(1.0, ge=0, description="Weight of the semantic vs CLIP image embedding term.")
    weight_clip_text: Float = Field(
        1.0, ge=0, description="Weight of each semantic vs CLIP text (caption, key objects) term."
    )
    weight_clip_motion: Float = Field(
        0.0,
        ge=0,
        description=(
            "Weight of the motion path vs CLIP text of the VLM's motion sentence (how things move or turn, which "
            "one frame cannot show; the semantic path sees one frame). Off by default: it failed the "
            "pre-registered probe rule on cheetah-run (docs/RESULTS.md 1l)."
        ),
    )
    weight_flow: Float = Field(1.0, ge=0, description="Weight of the flow end-point error (pixels).")
    flow_moving_threshold: Float = Field(
        0.0625,
        ge=0,
        description=(
            "Pixels: a valid pixel whose target flow is longer than this counts as moving in the flow loss. "
            "1/16 px by default: four steps of the flow PNG's 1/64 px resolution, so storage rounding never makes "
            "a still pixel moving and a flow estimator's sub-pixel noise on still background mostly does not; "
            "raise it for noisy estimated flow (DIS, RAFT)."
        ),
    )
    flow_static_share: Float = Field(
        0.5,
        ge=0,
        le=1,
        description=(
            "Most of the flow loss's weight the static (not moving) pixels of a batch may carry; static pixels "
            "are down-weighted to meet it, never up-weighted. 0.5 by default: moving and static pixels count "
            "alike (class balance) when static ones outnumber moving ones, as on cartpole, where most valid "
            "pixels do not move; 1: the plain mean end-point error; 0: moving pixels only."
        ),
    )
    weight_reward: Float = Field(0.1, ge=0, description="Weight of the reward squared error.")
    # Data.
    workers: Int = Field(
        1, ge=0, le=64, description="DataLoader worker processes per training process (0: read in the main process)."
    )
    shuffle_buffer: Int = Field(256, ge=0, description="Samples in each reader's shuffle buffer (0: no shuffling).")
    # Probe and scale-out.
    probe_alpha: Float = Field(
        0.0,
        ge=0,
        description=(
            "Ridge penalty of the linear probe on standardised features (0: chosen per task from "
            "pipeline.common.probe.ALPHAS by episode-grouped cross-validation on the train split)."
        ),
    )
    probe_max_per_task: Int = Field(
        5000, ge=0, description="Frames per task and split the probe reads at most (0: all)."
    )
    nproc: Int = Field(
        1,
        ge=1,
        le=1024,
        description="Processes: > 1 relaunches the stage under torchrun with DDP (gloo on CPU, nccl on CUDA).",
    )
    device: DeviceName = Field("auto")
    threads: Int = Field(
        0,
        ge=0,
        le=1024,
        description=(
            "torch CPU threads per process (0: torch's default, one per core or OMP_NUM_THREADS). The weights' "
            "bytes depend on it (float sums split differently), so set it (1 is also the fastest when other "
            "processes share the cores) to get the same bytes on machines with other core counts; the count used "
            "is in the metrics."
        ),
    )
    seed: Seed = Field(0)

    @property
    def text_terms_on(self) -> bool:
        """Some loss term reads the annotation's text embeddings (caption, key objects or motion)."""
        return self.weight_clip_text > 0 or self.weight_clip_motion > 0

    @model_validator(mode="after")
    def _check_paths(self) -> PretrainParams:
        if self.flow_input and self.paths == "semantic":
            raise ValueError(
                "flow_input: true feeds the motion path, which paths: semantic leaves out; "
                "set flow_input: false or paths: both|motion"
            )
        if self.semantic_stride > 1 and self.paths != "motion":
            if self.depth < 2:
                raise ValueError(
                    f"semantic_stride: {self.semantic_stride} strides the semantic path's second conv, "
                    f"which depth: {self.depth} does not have; set depth >= 2 or semantic_stride: 1"
                )
            if self.paths == "both" and self.interaction and self.interaction_kind == "gated":
                raise ValueError(
                    "interaction_kind: gated exchanges per pixel and needs both paths' maps the same size; "
                    "set semantic_stride: 1, or interaction_kind: global|attention"
                )
        return self

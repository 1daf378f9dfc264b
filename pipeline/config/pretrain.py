"""The ``pretrain`` params section: the dual-path backbone and its training."""
from __future__ import annotations

from pydantic import Field

from pipeline.config.base import DeviceName, Section


class PretrainParams(Section):
    frame_stack: int = Field(3, ge=2, le=16, description="Consecutive RGB frames stacked as the backbone's input.")
    feature_dim: int = Field(64, ge=8, le=4096, description="Size of the fused feature vector the SAC stage consumes.")
    interaction: bool = Field(True, description="Let the semantic and motion paths exchange information (off for ablation).")
    batch_size: int = Field(32, ge=1)
    steps: int = Field(200, ge=1, description="Optimiser steps.")
    lr: float = Field(3e-4, gt=0, le=1.0)
    weight_clip_image: float = Field(1.0, ge=0)
    weight_clip_text: float = Field(1.0, ge=0)
    weight_flow: float = Field(1.0, ge=0)
    weight_reward: float = Field(0.1, ge=0)
    workers: int = Field(1, ge=0, le=64, description="DataLoader worker processes.")
    device: DeviceName = Field("auto")
    seed: int = Field(0, ge=0)

"""The ``finetune`` params section: online SAC from pixels."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.config.base import DeviceName, Section


class FinetuneParams(Section):
    task: str = Field("cartpole-swingup", description="dm_control task trained online.")
    encoder_init: Literal["pretrained", "scratch", "frozen"] = Field(
        "pretrained",
        description="'pretrained': start from the pretrain checkpoint and fine-tune; 'scratch': random init; 'frozen': pretrained, never updated.",
    )
    frames: int = Field(4000, ge=1, description="Environment frames (after action repeat) to train for.")
    action_repeat: int = Field(8, ge=1)
    seed: int = Field(0, ge=0)
    device: DeviceName = Field("auto")

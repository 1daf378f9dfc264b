"""The ``encode`` params section: CLIP targets and WebDataset shards."""
from __future__ import annotations

from pydantic import Field

from pipeline.config.base import DeviceName, Section


class EncodeParams(Section):
    clip_model: str = Field("ViT-B-32", description="open_clip model name.")
    weights: str = Field("random", description="open_clip pretrained tag, local file, 'local-dir:/path', or 'random'.")
    batch_size: int = Field(64, ge=1, le=8192)
    device: DeviceName = Field("auto")
    shard_maxcount: int = Field(1000, ge=1, description="Samples per shard at most.")
    val_fraction: float = Field(0.25, ge=0.0, lt=1.0, description="Share of episodes per task in the validation split (split by episode, never by frame).")
    dataset_name: str = Field("semore-dataset", min_length=1, description="Name used in the dataset card.")
    license: str = Field("mit", description="License id written in the dataset card.")

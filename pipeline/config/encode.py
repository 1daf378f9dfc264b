"""The ``encode`` params section: CLIP targets and WebDataset shards."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.config.base import Bool, DeviceName, Float, Int, Section, Seed


class EncodeParams(Section):
    clip_backend: Literal["open_clip"] = Field(
        "open_clip", description="CLIP implementation: 'open_clip' (any open_clip model name)."
    )
    clip_model: str = Field(
        "semore-tiny-clip",
        min_length=1,
        description="open_clip model name (e.g. ViT-B-32, ViT-L-14); 'semore-tiny-clip' is a tiny config shipped "
        "with the project for offline CPU runs (random init only).",
    )
    weights: str = Field(
        "random",
        min_length=1,
        description="CLIP weights: an open_clip pretrained tag of clip_model (e.g. laion2b_s34b_b79k, openai), "
        "a local checkpoint file, 'local-dir:/path' (open_clip_config.json + weights), hf://<repo>[/<file>], "
        "or 'random'.",
    )
    batch_size: Int = Field(64, ge=1, le=8192, description="Frames (or texts) per CLIP forward pass.")
    device: DeviceName = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    fp16: Bool = Field(True, description="Half-precision autocast on CUDA (ignored on CPU).")
    seed: Seed = Field(
        0,
        description="Seeds the random CLIP initialisation (when weights are random) "
        "and the train/validation episode split.",
    )
    shard_maxcount: Int = Field(1000, ge=1, description="Samples per shard at most.")
    shard_maxsize_mb: Float = Field(
        1000.0,
        gt=0,
        description="Bytes per shard at most, in MB (1e6 bytes); a shard closes at whichever limit comes first.",
    )
    val_fraction: Float = Field(
        0.25,
        ge=0.0,
        lt=1.0,
        description="Share of episodes per task in the validation split (split by episode, never by frame); "
        "at least one episode per task when > 0 and the task has two or more.",
    )
    dataset_name: str = Field("semore-dataset", min_length=1, description="Name used in the dataset card.")
    license: str = Field(
        "mit",
        min_length=1,
        description="License id written in the dataset card (a Hub license id, e.g. mit, cc-by-4.0).",
    )

"""The ``flow`` params section: which optical-flow backend and how it runs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.config.base import Bool, DeviceName, Float, Int, Section


class FlowParams(Section):
    backend: Literal["simulator", "dis", "ptlflow"] = Field(
        "simulator",
        description="'simulator': exact flow from depth, segmentation and poses "
        "(needs collect.depth and collect.segmentation); 'dis': OpenCV DIS (no weights); "
        "'ptlflow': any ptlflow model (RAFT).",
    )
    model: str = Field(
        "raft_small", description="ptlflow model name (backend 'ptlflow'), e.g. raft_small, raft, rapidflow."
    )
    weights: str = Field(
        "things",
        description="ptlflow checkpoint (backend 'ptlflow'): a tag of the model (things, sintel, ...), a local file, "
        "a name in weights.cache_dir, or 'random'.",
    )
    batch_size: Int = Field(
        32, ge=1, le=4096, description="Frame pairs per forward pass (ptlflow, dis); batches span episode boundaries."
    )
    device: DeviceName = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N' (backend 'ptlflow').")
    fp16: Bool = Field(True, description="Half precision (autocast) on CUDA (ignored on CPU).")
    min_size: Int = Field(
        128,
        ge=0,
        le=4096,
        description="ptlflow: frames whose shorter side is below this are upsampled (bilinear) to it for the model, "
        "and the flow is resized back to frame pixels. "
        "RAFT models need 128 (their coarsest correlation level is 1/64 of the input); 0 keeps the frame size.",
    )
    dis_preset: Literal["ultrafast", "fast", "medium"] = Field(
        "medium", description="OpenCV DIS preset (backend 'dis')."
    )
    occlusion_tolerance: Float = Field(
        0.03,
        gt=0.0,
        le=1.0,
        description="Simulator flow: a moved point counts as visible in frame t+1 when that frame's depth "
        "near its target agrees within this fraction of its depth.",
    )
    metrics_every: Int = Field(
        4,
        ge=1,
        le=1000,
        description="The quality metrics (end-point error against the simulator's exact flow, photometric error) "
        "are computed on pairs 0, k, 2k, ... of each episode: a systematic sample, so they cost 1/k "
        "(for an estimating backend the exact flow they compare with costs about half as much as DIS itself); "
        "1 measures every pair.",
    )
    previews: Int = Field(
        4,
        ge=0,
        le=1000,
        description="Colour-wheel flow images (beside their frames) written per task for people to look at.",
    )

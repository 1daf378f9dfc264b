"""The ``flow`` params section: which optical-flow backend and how it runs."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.config.base import DeviceName, Section


class FlowParams(Section):
    backend: Literal["simulator", "dis", "ptlflow"] = Field(
        "simulator",
        description="'simulator': exact flow from depth, segmentation and poses; 'dis': OpenCV DIS (no weights); 'ptlflow': any ptlflow model (RAFT).",
    )
    model: str = Field("raft_small", description="ptlflow model name (backend 'ptlflow').")
    weights: str = Field("things", description="ptlflow checkpoint: a tag (things, sintel, ...), a local file, or 'random'.")
    batch_size: int = Field(32, ge=1, le=4096, description="Frame pairs per forward pass.")
    device: DeviceName = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    fp16: bool = Field(True, description="Half precision on CUDA (ignored on CPU).")
    previews: int = Field(4, ge=0, description="Colour-wheel flow images written per task for people to look at.")

"""OpenCV DIS optical flow (dense inverse search): no weights, fast on one CPU core."""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
import numpy as np

from pipeline.config import FlowParams, WeightsParams
from pipeline.flow.base import PairBackend

#: ``flow.dis_preset`` -> OpenCV preset constant.
PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


class DISBackend(PairBackend):
    """``cv2.DISOpticalFlow`` on grey frames; pairs are computed one by one (OpenCV has no batch API)."""

    name: ClassVar[str] = "dis"

    def __init__(self, preset: str = "medium", batch_size: int = 32) -> None:
        super().__init__(batch_size)
        if preset not in PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; choose one of {', '.join(PRESETS)}")
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(PRESETS[preset])

    @classmethod
    def from_params(cls, params: FlowParams, weights: WeightsParams) -> DISBackend:
        return cls(params.dis_preset, params.batch_size)

    def pairs_flow(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        n, h, w = first.shape[:3]
        out = np.empty((n, 2, h, w), np.float32)
        for i in range(n):
            grey0 = cv2.cvtColor(first[i], cv2.COLOR_RGB2GRAY)
            grey1 = cv2.cvtColor(second[i], cv2.COLOR_RGB2GRAY)
            flow = self._dis.calc(grey0, grey1, None)  # (H, W, 2): dx, dy from grey0 to grey1
            out[i] = flow.transpose(2, 0, 1)
        return out

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "preset": self.preset, "opencv": cv2.__version__}

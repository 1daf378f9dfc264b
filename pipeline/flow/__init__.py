"""Optical flow for the motion path: exact simulator flow, OpenCV DIS, and ptlflow models (RAFT).

``run_flow`` is the stage; backends sit behind :class:`FlowBackend` and are
chosen by ``flow.backend`` through :data:`pipeline.flow.registry.BACKENDS`.
See :mod:`pipeline.flow.base` for the sign convention and the mask semantics.
"""
from __future__ import annotations

from pipeline.flow.base import FlowBackend, FlowResult, PairBackend
from pipeline.flow.registry import BACKENDS, make_backend
from pipeline.flow.runner import run_flow

__all__ = ["BACKENDS", "FlowBackend", "FlowResult", "PairBackend", "make_backend", "run_flow"]

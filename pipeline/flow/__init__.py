"""Optical flow for the motion path: exact simulator flow, OpenCV DIS, and ptlflow models (RAFT).

:func:`pipeline.flow.run.run` is the stage; backends sit behind :class:`FlowBackend` and are
chosen by ``flow.backend`` through :data:`pipeline.flow.registry.BACKENDS`; the output file is
defined in :mod:`pipeline.flow.files`. See :mod:`pipeline.flow.base` for the sign convention
and the mask semantics.
"""

from __future__ import annotations

from pipeline.flow.base import FlowBackend, FlowResult, PairBackend
from pipeline.flow.registry import BACKENDS, make_backend
from pipeline.flow.run import FlowSummary, run_flow

# ``run`` is not re-exported: ``pipeline.flow.run`` must stay the module (``from pipeline.flow.run import run``).
__all__ = ["BACKENDS", "FlowBackend", "FlowResult", "FlowSummary", "PairBackend", "make_backend", "run_flow"]

"""Flow backends by name: ``flow.backend`` picks one. A new backend is one module and one line here."""

from __future__ import annotations

from pipeline.common.registry import Registry
from pipeline.config import FlowParams, WeightsParams
from pipeline.flow.base import FlowBackend

#: ``flow.backend`` value -> backend class, imported when asked for (ptlflow imports torch and every model).
BACKENDS: Registry[type[FlowBackend]] = Registry(
    "flow.backend",
    {
        "simulator": "pipeline.flow.simulator:SimulatorBackend",
        "dis": "pipeline.flow.dis:DISBackend",
        "ptlflow": "pipeline.flow.ptlflow_backend:PtlflowBackend",
    },
)


def make_backend(params: FlowParams, weights: WeightsParams) -> FlowBackend:
    """Build the backend named by ``params.backend``.

    Raises:
        pipeline.common.registry.UnknownEntryError: an unknown name (the message lists the valid ones).
    """
    return BACKENDS.get(params.backend).from_params(params, weights)

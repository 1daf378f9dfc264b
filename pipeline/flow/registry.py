"""Flow backends by name: ``flow.backend`` picks one. A new backend is one module and one line here."""
from __future__ import annotations

from pipeline.config import FlowParams, WeightsParams
from pipeline.flow.base import FlowBackend
from pipeline.flow.dis import DISBackend
from pipeline.flow.ptlflow_backend import PtlflowBackend
from pipeline.flow.simulator import SimulatorBackend

#: ``flow.backend`` value -> backend class (heavy libraries are imported when one is built).
BACKENDS: dict[str, type[FlowBackend]] = {
    "simulator": SimulatorBackend,
    "dis": DISBackend,
    "ptlflow": PtlflowBackend,
}


def make_backend(params: FlowParams, weights: WeightsParams) -> FlowBackend:
    """Build the backend named by ``params.backend``."""
    try:
        cls = BACKENDS[params.backend]
    except KeyError:
        raise ValueError(f"flow.backend = {params.backend!r}: known backends are {', '.join(BACKENDS)}") from None
    return cls.from_params(params, weights)

"""The ``weights`` params section: global policy for model weights."""

from __future__ import annotations

from pydantic import Field

from pipeline.config.base import Bool, OnMissing, Section


class WeightsParams(Section):
    """How model weights are found.

    A backend's own ``weights`` key names its source: a local file or folder, a
    name in ``cache_dir``, ``hf://<repo_id>[/<file>]`` or an ``http(s)://`` URL
    (downloaded when online), a backend-specific tag (e.g. ptlflow's ``things``),
    or ``random`` for an explicit random initialisation.
    """

    on_missing: OnMissing = Field(
        "random",
        description="Offline and not found: 'error' stops with instructions, "
        "'random' initialises randomly (logged, recorded in provenance).",
    )
    cache_dir: str = Field(
        "~/.cache/semore/weights",
        description="Folder searched for weights by name, and where downloads are stored.",
    )
    offline: Bool = Field(
        False,
        description="Never download, even when the network is reachable "
        "(HF_HUB_OFFLINE=1 or SEMORE_OFFLINE=1 do the same).",
    )

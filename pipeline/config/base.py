"""Shared base class and helpers for the typed params sections.

Every section is a pydantic model that forbids unknown keys, so a typo in
``params.yaml`` stops the run with the key named instead of being ignored.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

#: Where a torch computation runs. ``auto`` picks CUDA when present, else the CPU.
DeviceName = str

#: What to do when a model's weights cannot be found and cannot be downloaded.
#: ``error`` stops with a message that says which file to put where; ``random``
#: initialises the model randomly, logs it loudly and records it in provenance.
OnMissing = Literal["error", "random"]


class Section(BaseModel):
    """Base for every params section: strict keys, no silent coercion of junk."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

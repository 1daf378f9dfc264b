"""Torch device selection, in one place: CUDA when present, the CPU otherwise."""

from __future__ import annotations

import logging

from pipeline.common.errors import UserError

log = logging.getLogger(__name__)


class DeviceError(UserError, RuntimeError):
    """A device was requested that this machine does not have."""


def select_device(name: str = "auto", *, param_key: str = "device") -> torch.device:  # noqa: F821
    """Resolve a ``device`` param: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        DeviceError: CUDA was asked for explicitly and is not available, or the name is malformed.
    """
    import torch

    name = name.strip().lower()
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif name == "cpu":
        device = torch.device("cpu")
    elif name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"{param_key} = {name!r} but CUDA is not available on this machine; set {param_key}: auto or cpu"
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"{param_key} = {name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    else:
        raise DeviceError(f"{param_key} = {name!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    log.debug("device %s -> %s", name, device)
    return device


def autocast_dtype(device: torch.device, fp16: bool) -> torch.dtype | None:  # noqa: F821
    """The reduced precision to run inference in on ``device`` (None: full fp32)."""
    import torch

    if fp16 and device.type == "cuda":
        return torch.float16
    return None

"""User-fixable errors of the collect stage (all :class:`pipeline.common.errors.UserError`: exit 2, no traceback)."""

from __future__ import annotations

from pipeline.common.errors import UserError


class UnknownTaskError(UserError, ValueError):
    """A task name that no environment backend knows; the message lists the valid names."""


class CameraError(UserError, ValueError):
    """A camera id or name the task's model does not have."""


class PolicyError(UserError, ValueError):
    """A behaviour policy that cannot drive the task (bad checkpoint, wrong action size, ...)."""


class DiskSpaceError(UserError, OSError):
    """The output disk cannot hold the collect run (estimated before anything is recorded)."""

"""One lazy registry for every kind of backend a param chooses (flow, annotate, CLIP, environments).

A registry maps a param's value to ``"module:attribute"``; the module is imported only when
that entry is asked for, so listing or validating names never imports torch, ptlflow or
MuJoCo. A new backend is one module and one line in its registry::

    FLOW_BACKENDS = Registry("flow.backend", {"dis": "pipeline.flow.dis:DISBackend", ...})
    cls = FLOW_BACKENDS.get(params.backend)
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

from pipeline.common.errors import UserError

T = TypeVar("T")


class UnknownEntryError(UserError):
    """A param names an entry its registry does not have."""


class Registry(Generic[T]):
    """Names chosen by the param ``param`` -> objects imported lazily from ``"module:attr"`` paths."""

    def __init__(self, param: str, entries: Mapping[str, str]):
        for name, path in entries.items():
            if ":" not in path:
                raise ValueError(f"registry {param}: entry {name!r} -> {path!r} is not 'module:attribute'")
        self.param = param
        self._entries = dict(entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def names(self) -> list[str]:
        """The valid values of the param, in registration order."""
        return list(self._entries)

    def path(self, name: str) -> str:
        """``"module:attr"`` of ``name``; raises :class:`UnknownEntryError` naming the valid values."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownEntryError(
                f"{self.param} = {name!r} is not known; valid values: {', '.join(self._entries)}"
            ) from None

    def get(self, name: str) -> T:
        """Import and return the object registered as ``name``."""
        module_name, _, attr = self.path(name).partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

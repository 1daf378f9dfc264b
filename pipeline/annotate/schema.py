"""The structured answer of every annotate backend, and the parser from model text to it.

An annotation is a JSON object::

    {"caption": "one short sentence",
     "objects": [{"name": "cart", "description": "...", "box": [x0, y0, x1, y1] | null}, ...],
     "motion": "one short sentence"}

``box`` is in pixels of the annotated frame: ``x`` along columns (right), ``y``
along rows (down), ``x0 <= x1`` and ``y0 <= y1``; the simulator writes integer
pixel edges (the box covers columns ``x0 .. x1 - 1``), a VLM may give floats.

:func:`parse_annotation` is tolerant of how models wrap JSON (code fences,
prose before or after, several candidate objects) and strict on the schema:
missing or unknown keys, wrong types, empty names or malformed boxes are errors.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class AnnotationError(ValueError):
    """Model text that holds no schema-valid annotation; the message says why."""


class KeyObject(BaseModel):
    """One key object of the frame."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(min_length=1, max_length=200, description="short name of the object, e.g. 'cart'")
    description: str = Field(max_length=2000, description="what it is, where it is, what it does")
    box: list[float] | None = Field(description="[x0, y0, x1, y1] in pixels, or null when unknown")

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("name is blank")
        return value.strip()

    @field_validator("box")
    @classmethod
    def _box_shape(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return None
        if len(value) != 4:
            raise ValueError(f"box must have 4 numbers [x0, y0, x1, y1], got {len(value)}")
        if not all(math.isfinite(v) for v in value):
            raise ValueError("box holds a non-finite number")
        x0, y0, x1, y1 = value
        if x1 < x0 or y1 < y0:
            raise ValueError(f"box {value} has x1 < x0 or y1 < y0")
        return value


class Annotation(BaseModel):
    """Caption, key objects and motion of one frame."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    caption: str = Field(min_length=1, max_length=2000)
    objects: list[KeyObject] = Field(max_length=100)
    motion: str = Field(max_length=2000)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (the ``annotation`` of an output record)."""
        return self.model_dump(mode="json")


_FENCE_RE = re.compile(r"```[A-Za-z0-9_-]*\s*\n?(.*?)```", re.DOTALL)


def _candidates(text: str) -> list[Any]:
    """Every JSON value that starts at a ``{`` of ``text`` (fenced blocks first), outermost first."""
    decoder = json.JSONDecoder()
    found: list[Any] = []
    sources = [m.group(1) for m in _FENCE_RE.finditer(text)] + [text]
    for source in sources:
        pos = source.find("{")
        while pos != -1:
            try:
                value, end = decoder.raw_decode(source, pos)
            except json.JSONDecodeError:
                pos = source.find("{", pos + 1)
                continue
            found.append(value)
            pos = source.find("{", end)  # skip what was consumed: nested objects are not candidates
    return found


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_annotation(text: str) -> Annotation:
    """Extract and validate the annotation held in a model's answer.

    Raises:
        AnnotationError: no JSON object in ``text``, or none that matches the schema
            (the message gives the first schema violation).
    """
    if not isinstance(text, str) or not text.strip():
        raise AnnotationError("empty answer")
    candidates = [c for c in _candidates(text) if isinstance(c, dict)]
    if not candidates:
        raise AnnotationError("no JSON object in the answer")
    first_error: str | None = None
    for candidate in candidates:
        try:
            return Annotation.model_validate(candidate)
        except ValidationError as exc:
            first_error = first_error or _describe(exc)
    raise AnnotationError(f"JSON does not match the annotation schema: {first_error}")

"""The annotate stage's formats: a backend's answer, the parser from model text to it, and the output file.

This module is the one definition of both; the annotate stage writes its files
through :class:`AnnotationFile` and every reader (the encode stage) opens them
with :func:`read_annotation_file`, which validates a file once, on open.

An annotation is a JSON object::

    {"caption": "one short sentence",
     "objects": [{"name": "cart", "description": "...", "box": [x0, y0, x1, y1] | null}, ...],
     "motion": "one short sentence"}

``box`` is in pixels of the annotated frame: ``x`` along columns (right), ``y``
along rows (down), ``x0 <= x1`` and ``y0 <= y1``, inside the image
(``0 <= x <= W``, ``0 <= y <= H``, checked when the frame size is known: pass
``context={"frame_size": (H, W)}`` to pydantic, or ``frame_size`` to the functions
below); the simulator writes integer pixel edges (the box covers columns
``x0 .. x1 - 1``), a VLM may give floats. The caption must not be blank.

:func:`parse_annotation` is tolerant of how models wrap JSON (code fences,
prose before or after, several candidate objects) and strict on the schema:
missing or unknown keys, wrong types, blank names or captions, and malformed boxes are errors.

An output file (``episode_<i:06d>.json``) is :class:`AnnotationFile`: the run's
header (task, episode, backend, model, prompt, every_k, weights), the
:class:`AnnotationSource` (the episode file it was computed from and its SHA-256,
which readers check against the episode they pair it with) and one
:class:`AnnotationRecord` per annotated frame, steps 0, k, 2k, ... <= T, sorted.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Generator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from pipeline.common.errors import UserError
from pipeline.common.io import sha256_of


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
    def _box_shape(cls, value: list[float] | None, info: ValidationInfo) -> list[float] | None:
        if value is None:
            return None
        if len(value) != 4:
            raise ValueError(f"box must have 4 numbers [x0, y0, x1, y1], got {len(value)}")
        if not all(math.isfinite(v) for v in value):
            raise ValueError("box holds a non-finite number")
        x0, y0, x1, y1 = value
        if x1 < x0 or y1 < y0:
            raise ValueError(f"box {value} has x1 < x0 or y1 < y0")
        frame_size = (info.context or {}).get("frame_size")
        if frame_size is not None:
            height, width = frame_size
            if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                raise ValueError(
                    f"box {value} lies outside the {width}x{height} image (0 <= x <= {width}, 0 <= y <= {height})"
                )
        return value


class Annotation(BaseModel):
    """Caption, key objects and motion of one frame."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    caption: str = Field(min_length=1, max_length=2000)
    objects: list[KeyObject] = Field(max_length=100)
    motion: str = Field(max_length=2000)

    @field_validator("caption")
    @classmethod
    def _caption_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("caption is blank")
        return value

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (the ``annotation`` of an output record)."""
        return self.model_dump(mode="json")


_FENCE_RE = re.compile(r"```[A-Za-z0-9_-]*\s*\n?(.*?)```", re.DOTALL)


#: Characters that matter when finding ``{...}`` spans: braces, and the quotes and escapes of strings.
_SIGNIFICANT_RE = re.compile(r'[{}"\\]')
#: Times the span scan starts again after an unclosed ``{`` or a span that is not JSON (a stray brace
#: in prose, a broken object around a good one), at most: the scan stays a few linear passes.
_MAX_RESCANS = 8


def _object_spans(source: str) -> Generator[tuple[int, int], int | None, None]:
    """``(start, end)`` of each top-level ``{...}`` span of ``source`` whose braces balance (braces inside
    JSON strings ignored), left to right; the caller may :meth:`send` a start to rescan from after it."""
    pos, rescans = source.find("{"), 0
    while pos != -1:
        depth, in_string, skip, end = 0, False, -1, -1
        for match in _SIGNIFICANT_RE.finditer(source, pos):
            k, c = match.start(), match.group()
            if k <= skip:
                continue
            if in_string:
                if c == "\\":
                    skip = k + 1
                elif c == '"':
                    in_string = False
            elif c == '"':
                in_string = True
            elif c == "{":
                depth += 1
            else:  # "}"
                depth -= 1
                if depth == 0:
                    end = k + 1
                    break
        if end == -1:  # unclosed: a stray brace; try the next one
            rescans += 1
            pos = source.find("{", pos + 1) if rescans <= _MAX_RESCANS else -1
            continue
        rescan = yield pos, end
        if rescan is not None and rescans < _MAX_RESCANS:
            rescans += 1
            pos = source.find("{", pos + 1)
        else:
            pos = source.find("{", end)


def _candidates(text: str) -> list[Any]:
    """Every JSON value held by a top-level ``{...}`` span of ``text`` (fenced blocks first), outermost first;
    inside a span that is not JSON, the spans it holds. A few linear passes over ``text``, whatever it holds."""
    found: list[Any] = []
    sources = [m.group(1) for m in _FENCE_RE.finditer(text)] + [text]
    for source in sources:
        spans = _object_spans(source)
        rescan = None
        while True:
            try:
                start, end = spans.send(rescan)
            except StopIteration:
                break
            try:
                found.append(json.loads(source[start:end]))
                rescan = None
            except (json.JSONDecodeError, RecursionError):  # RecursionError: nesting deeper than Python's stack
                rescan = start
    return found


def frame_context(frame_size: tuple[int, int] | None) -> dict[str, Any] | None:
    """The pydantic validation context that checks boxes against a (H, W) frame (None: unchecked)."""
    return {"frame_size": tuple(frame_size)} if frame_size is not None else None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_annotation(text: str, frame_size: tuple[int, int] | None = None) -> Annotation:
    """Extract and validate the annotation held in a model's answer.

    Args:
        text: the model's answer.
        frame_size: (H, W) of the annotated frame: boxes outside it are invalid.

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
            return Annotation.model_validate(candidate, context=frame_context(frame_size))
        except ValidationError as exc:
            first_error = first_error or _describe(exc)
    raise AnnotationError(f"JSON does not match the annotation schema: {first_error}")


# -- the output file -------------------------------------------------------------------------------
class AnnotationFileError(UserError, ValueError):
    """An annotation file that is missing, unreadable or not in this module's format; the message names it and
    the fix."""


def output_filename(episode: int) -> str:
    """The annotation file name of episode ``episode``: ``episode_<i:06d>.json``."""
    return f"episode_{episode:06d}.json"


def annotated_steps(length: int, every_k: int) -> list[int]:
    """Frames annotated in an episode of ``length`` agent steps (``length + 1`` frames): 0, k, 2k, ... <= length."""
    return list(range(0, length + 1, every_k))


class AnnotationRecord(BaseModel):
    """One annotated frame: an ``ok`` annotation, or a failure with its reason (and the model's raw answer)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    step: int = Field(ge=0, description="frame index in the episode (0..T)")
    status: Literal["ok", "failed"]
    annotation: Annotation | None
    raw: str | None = Field(
        description="the model's answer text (null for the simulator and transport failures without a body)"
    )
    error: str | None = Field(description="why the frame failed (null when ok)")

    @model_validator(mode="after")
    def _status_agrees(self) -> AnnotationRecord:
        if self.status == "ok" and (self.annotation is None or self.error is not None):
            raise ValueError(f"step {self.step}: status 'ok' needs an annotation and no error")
        if self.status == "failed" and (self.annotation is not None or not self.error):
            raise ValueError(f"step {self.step}: status 'failed' needs an error and no annotation")
        return self


class AnnotationSource(BaseModel):
    """The episode file an annotation file was computed from."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    episode: str = Field(min_length=1, description="the episode file's name, e.g. 'episode_000000.npz'")
    episode_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the episode file (pipeline.common.io.sha256_of)"
    )


class AnnotationFile(BaseModel):
    """One episode's annotation file (docs/ARCHITECTURE.md, annotate)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    task: str = Field(min_length=1)
    episode: int = Field(ge=0)
    source: AnnotationSource
    backend: str = Field(min_length=1)
    model: str
    prompt: str
    every_k: int = Field(ge=1)
    weights: dict[str, Any] | None = Field(
        description="ResolvedWeights.provenance() of the model, null for weightless backends"
    )
    records: list[AnnotationRecord]

    @model_validator(mode="after")
    def _steps_sorted(self) -> AnnotationFile:
        steps = [r.step for r in self.records]
        if steps != sorted(set(steps)):
            raise ValueError(f"record steps {steps[:8]}{' ...' if len(steps) > 8 else ''} are not sorted and unique")
        return self

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready file body (what :func:`pipeline.common.io.write_json_atomic` writes)."""
        return self.model_dump(mode="json")


def read_annotation_file(
    path: str | Path,
    length: int | None = None,
    frame_size: tuple[int, int] | None = None,
    episode: str | Path | None = None,
    episode_sha256: str | None = None,
) -> AnnotationFile:
    """Open and validate one annotation file.

    Args:
        path: ``data/annotations/<task>/episode_<i:06d>.json``.
        length: the episode's T (agent steps), when known: the records must then be
            exactly the frames 0, k, 2k, ... <= T of its ``every_k``.
        frame_size: (H, W) of the episode's frames, when known: every box must lie in the image.
        episode: the episode file this annotation file is paired with, when known: its
            ``source`` must name this file and its SHA-256 (``episode_sha256`` if given,
            else computed with :func:`pipeline.common.io.sha256_of`).

    Raises:
        AnnotationFileError: missing or unreadable file, content that does not follow
            this format, or a source other than ``episode`` (the message names the
            file(s), the field and the fix).
    """
    path = Path(path)
    fix = (
        "Fix: rerun the annotate stage for this task "
        f"(semore annotate --episodes data/episodes/<task> --out {path.parent})."
    )
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise AnnotationFileError(f"{path}: no such annotation file.\n  {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationFileError(
            f"{path}: unreadable annotation file ({type(exc).__name__}: {exc}).\n  {fix}"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationFileError(f"{path}: not JSON ({exc}).\n  {fix}") from None
    try:
        doc = AnnotationFile.model_validate(data, context=frame_context(frame_size))
    except ValidationError as exc:
        raise AnnotationFileError(
            f"{path}: not an annotation file of this pipeline ({_describe(exc)}).\n  {fix}"
        ) from None
    if length is not None:
        expected = annotated_steps(length, doc.every_k)
        steps = [r.step for r in doc.records]
        if steps != expected:
            raise AnnotationFileError(
                f"{path}: records at steps {steps[:6]}{' ...' if len(steps) > 6 else ''}, expected every "
                f"{doc.every_k}th frame of an episode of {length} steps ({len(expected)} records).\n  {fix}"
            )
    if episode is not None:
        episode = Path(episode)
        digest = episode_sha256 if episode_sha256 is not None else sha256_of(episode)
        if (doc.source.episode, doc.source.episode_sha256) != (episode.name, digest):
            raise AnnotationFileError(
                f"{path} was computed from another episode than {episode}: its source is {doc.source.episode} "
                f"with sha256 {doc.source.episode_sha256[:12]}..., "
                f"the episode file has sha256 {digest[:12]}....\n  {fix}"
            )
    return doc

"""The annotate stage: key-information annotations of frames from a VLM or the simulator.

Public API: :func:`annotate_task` (one task folder), the backend registry
:data:`BACKENDS` / :func:`create_backend`, the answer schema :class:`Annotation`
and :func:`parse_annotation`. Heavy libraries are imported by the backends that need them.
"""
from __future__ import annotations

from pipeline.annotate.base import BACKENDS, Backend, FrameItem, FrameResult, create_backend
from pipeline.annotate.runner import AnnotateIncomplete, annotate_task
from pipeline.annotate.schema import Annotation, AnnotationError, KeyObject, parse_annotation

__all__ = [
    "BACKENDS",
    "AnnotateIncomplete",
    "Annotation",
    "AnnotationError",
    "Backend",
    "FrameItem",
    "FrameResult",
    "KeyObject",
    "annotate_task",
    "create_backend",
    "parse_annotation",
]

"""The annotate stage: key-information annotations of frames from a VLM or the simulator.

Public API: :func:`pipeline.annotate.run.run` (one task folder -> :class:`AnnotateSummary`), the backend
registry :data:`BACKENDS` / :func:`create_backend`, the answer schema
:class:`Annotation` / :func:`parse_annotation`, and the output file format
:class:`AnnotationFile` / :func:`read_annotation_file` (what readers such as the
encode stage open annotation files with). Heavy libraries are imported by the
backends that need them.
"""

from __future__ import annotations

from pipeline.annotate.base import BACKENDS, Backend, FrameItem, FrameResult, create_backend
from pipeline.annotate.run import AnnotateIncomplete, AnnotateSummary
from pipeline.annotate.schema import (
    Annotation,
    AnnotationError,
    AnnotationFile,
    AnnotationFileError,
    AnnotationRecord,
    KeyObject,
    annotated_steps,
    output_filename,
    parse_annotation,
    read_annotation_file,
)

__all__ = [
    "BACKENDS",
    "AnnotateIncomplete",
    "AnnotateSummary",
    "Annotation",
    "AnnotationError",
    "AnnotationFile",
    "AnnotationFileError",
    "AnnotationRecord",
    "Backend",
    "FrameItem",
    "FrameResult",
    "KeyObject",
    "annotated_steps",
    "create_backend",
    "output_filename",
    "parse_annotation",
    "read_annotation_file",
]

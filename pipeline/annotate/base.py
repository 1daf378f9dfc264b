"""The annotate backend interface, the unit of work it receives and returns, and the registry.

A backend turns :class:`FrameItem` s (one frame, its prompt, and the simulator's
view of it when the episode has one) into :class:`FrameResult` s. Results may
come back in any order and as soon as each is ready, so the runner can cache
every finished frame at once: an interrupted run loses nothing it finished.

A new backend is one module with a :class:`Backend` subclass and one line in
:data:`BACKENDS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from pipeline.annotate.schema import Annotation, AnnotationError, AnnotationRecord, parse_annotation
from pipeline.common.registry import Registry

if TYPE_CHECKING:
    from pipeline.annotate.truth import SceneTruth
    from pipeline.config import AnnotateParams, WeightsParams

#: Backend name (the ``annotate.backend`` param) -> its :class:`Backend` class, imported on use.
BACKENDS: Registry[type[Backend]] = Registry(
    "annotate.backend",
    {
        "simulator": "pipeline.annotate.simulator:SimulatorBackend",
        "transformers": "pipeline.annotate.transformers_backend:TransformersBackend",
        "openai": "pipeline.annotate.openai_backend:OpenAIBackend",
    },
)

Status = Literal["ok", "failed"]


@dataclass
class FrameItem:
    """One frame to annotate.

    Attributes:
        task, episode, step: where the frame comes from (step = frame index in the episode).
        image: (H, W, 3) uint8 RGB, its own copy (not a view into the episode).
        prompt: the rendered prompt (``{task}`` filled in).
        scene: the simulator's view of this frame (visible bodies, poses, velocities), or
            None when the episode has no segmentation.
        key: cache key (set by the runner; see :mod:`pipeline.annotate.cache`).
        rerun: earlier runs whose answers for this frame were invalid (0 on the first
            ask); backends sample a rerun's answers with seeds past those runs' seeds.
    """

    task: str
    episode: int
    step: int
    image: np.ndarray
    prompt: str
    scene: SceneTruth | None = None
    key: str = ""
    rerun: int = 0

    @property
    def frame_size(self) -> tuple[int, int]:
        """(H, W) of :attr:`image`: boxes of an answer must lie inside it."""
        return int(self.image.shape[0]), int(self.image.shape[1])


@dataclass(frozen=True)
class FrameResult:
    """What a backend made of one frame.

    ``final`` is False for failures that say nothing about the frame (the server
    was unreachable, timed out, or answered with a broken protocol message): they
    are recorded in this run's outputs but not cached, so a rerun tries again.
    An invalid answer after all retries is final for this run and cached with the
    number of runs that got one (:attr:`runs`); later runs ask again until
    ``annotate.max_invalid_runs`` runs have.
    """

    item: FrameItem
    status: Status
    annotation: Annotation | None
    raw: str | None
    error: str | None
    final: bool = True
    calls: int = 1

    @property
    def runs(self) -> int:
        """Runs that asked for this frame's answer, this one included (``item.rerun + 1``)."""
        return self.item.rerun + 1

    def record(self) -> AnnotationRecord:
        """The output record of this frame (see :class:`pipeline.annotate.schema.AnnotationRecord`)."""
        return AnnotationRecord(
            step=self.item.step, status=self.status, annotation=self.annotation, raw=self.raw, error=self.error
        )


def result_from_text(item: FrameItem, raw: str, calls: int = 1) -> FrameResult:
    """Parse a model answer into an ``ok`` result, or a final ``failed`` one carrying the raw text."""
    try:
        return FrameResult(item, "ok", parse_annotation(raw, item.frame_size), raw, None, True, calls)
    except AnnotationError as exc:
        return FrameResult(item, "failed", None, raw, f"invalid answer: {exc}", True, calls)


class Backend(ABC):
    """Interface of an annotate backend.

    Subclasses set :attr:`name`, and in ``__init__`` :attr:`model` (written into
    outputs) and :attr:`model_key` (the model's identity in cache keys: a content
    hash where there is one, so replacing weights in place never serves stale answers).
    """

    name: ClassVar[str]
    #: False for backends cheaper to rerun than a cache lookup (the simulator).
    uses_cache: ClassVar[bool] = True
    #: True when every frame needs :attr:`FrameItem.scene` (segmentation in the episodes).
    needs_scene: ClassVar[bool] = False

    model: str
    model_key: str

    def provenance(self) -> dict[str, Any] | None:
        """Weights provenance (``ResolvedWeights.provenance()``), or None for weightless backends."""
        return None

    @abstractmethod
    def annotate(self, items: Iterable[FrameItem]) -> Iterator[FrameResult]:
        """Annotate ``items`` (pulled lazily); yield one result per item, in any order, as each is ready.

        Must yield a result for every item it pulled, failures included, and never raise
        for a single frame's problem (only for a broken setup).
        """

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op unless a backend holds models, sessions or threads
        """Release models, sessions and threads."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create_backend(params: AnnotateParams, weights: WeightsParams) -> Backend:
    """Build the backend chosen by ``params.backend``; setup problems raise ``UserError`` before any work."""
    return BACKENDS.get(params.backend)(params, weights)

"""How much of the state an annotation's texts carry: distinct texts, their entropy, and a cross-validated probe.

The pretraining's text targets are CLIP embeddings of each annotated frame's caption and
key-object text. If the texts barely vary (4 distinct captions in a task), those targets hold
almost nothing about the state. For each text field (``caption``; ``objects`` as the encode stage
joins them, ``name: description; ...``; ``motion``) this reports, per task:

* ``distinct``: how many different texts; ``entropy_bits``: the Shannon entropy of their
  frequencies (log2 of the number of equally likely texts they are worth);
* ``probe_r2`` (``_position``, ``_velocity``): how well the text predicts the simulator's state,
  by the evaluate stage's probe protocol (:func:`pipeline.common.probe.out_of_fold`: ridge, k-fold **by
  episode**, penalty chosen by an inner episode-grouped CV, pooled out-of-fold R^2 averaged over
  standardised state dimensions). Features: a binary bag of the text's words and word pairs (what
  a linear reader of the words can use); a text first seen in a held-out episode still shares
  words with the training texts, unlike a one-hot caption id. The target is the joint state from
  ``qpos`` / ``qvel``: hinge angles as cos/sin, slide positions, velocities; the untracked root
  position (slide joints named ``rootx``, a free joint's x and y) is left out, as in the task's own
  observation, since no tracking view shows it. A constant caption scores about 0 (slightly below:
  the training folds' mean misses the held-out episodes'); needs at least :data:`MIN_EPISODES`
  episodes (else the probe figures are null).

The annotate stage puts this under ``text_information`` in its metrics file for any backend, on
the frames with simulator truth (segmentation) and an ``ok`` annotation.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.annotate.schema import Annotation
from pipeline.annotate.truth import SceneTruth
from pipeline.sim.joint_state import model_joints, state_matrix

log = logging.getLogger(__name__)

#: Fewest episodes the probe runs on: with two, each fold would train on a single episode.
MIN_EPISODES = 3


def text_features(texts: list[str]) -> np.ndarray:
    """(N, F) float64 binary bag of lower-case words and word pairs of each text (F >= 1; one zero column
    when no text has a word)."""
    from sklearn.feature_extraction.text import CountVectorizer

    try:
        bag = CountVectorizer(binary=True, ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b").fit_transform(texts)
    except ValueError:  # empty vocabulary: no text has a word
        return np.zeros((len(texts), 1))
    return bag.toarray().astype(np.float64)


def entropy_bits(texts: list[str]) -> float:
    """Shannon entropy (bits) of the texts' frequencies."""
    counts = np.array(sorted(Counter(texts).values()), np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: one text gives 0.0, not -0.0


def _number(value: float) -> float | None:
    return round(float(value), 6) if math.isfinite(value) else None


def text_information(
    texts: dict[str, list[str]], episode: np.ndarray, state: np.ndarray, kinds: list[str]
) -> dict[str, Any]:
    """Distinct texts, entropy and probe R^2 of each text field (the module docstring).

    Args:
        texts: field name -> (N,) texts, one per frame.
        episode: (N,) episode id of each frame (the probe's folds).
        state: (N, D) float state of each frame (:func:`pipeline.sim.joint_state.state_matrix`);
            ``kinds``: (D,) its columns' kinds.

    Returns:
        ``{"frames", "episodes", "state_dims", <field>: {"distinct", "entropy_bits", "probe_r2",
        "probe_r2_position", "probe_r2_velocity"}}``; probe figures are None with fewer than
        :data:`MIN_EPISODES` episodes or no varying state dimension, or without scikit-learn (logged).
    """
    episode = np.asarray(episode)
    n_episodes = len(np.unique(episode))
    varying = int((np.asarray(state).std(axis=0) > 1e-8).sum()) if len(state) else 0
    can_probe = n_episodes >= MIN_EPISODES and varying > 0
    try:
        from threadpoolctl import threadpool_limits

        from pipeline.common.probe import ALPHAS, FOLDS, out_of_fold, pooled_r2
    except ImportError as exc:  # a project dependency; a bare environment (the GPU check's image) may lack it
        log.warning("annotate: no text probe in text_information (%s); the counts are still reported", exc)
        can_probe = False
    out: dict[str, Any] = {"frames": int(len(episode)), "episodes": n_episodes, "state_dims": varying}
    for name, values in texts.items():
        entry: dict[str, Any] = {
            "distinct": len(set(values)),
            "entropy_bits": _number(entropy_bits(values)) if values else None,
        }
        probe = {"probe_r2": None, "probe_r2_position": None, "probe_r2_velocity": None}
        if can_probe:
            # Small matrices (frames x ~100 words): multithreaded BLAS only contends for the cores (12x slower measured
            # on the 2-core machine under load) and one thread gives the same numbers every run.
            with threadpool_limits(limits=1):
                oof = out_of_fold(text_features(values), state, episode, kinds, alphas=list(ALPHAS), folds=FOLDS)
            probe = {
                key: _number(pooled_r2(oof, group))
                for key, group in (
                    ("probe_r2", "all"),
                    ("probe_r2_position", "position"),
                    ("probe_r2_velocity", "velocity"),
                )
            }
        out[name] = entry | probe
    return out


@dataclass
class TextSamples:
    """The texts and states of a run's annotated frames with simulator truth (one task), for
    :func:`text_information`."""

    task: str = ""
    suite: str = ""
    episode: list[int] = field(default_factory=list)
    texts: dict[str, list[str]] = field(default_factory=dict)  # TEXT_ROWS name -> one text per frame
    qpos: list[np.ndarray] = field(default_factory=list)
    qvel: list[np.ndarray] = field(default_factory=list)

    def add(self, episode: int, annotation: Annotation, scene: SceneTruth) -> None:
        """One frame's ``ok`` annotation and its truth."""
        from pipeline.dataset.schema import TEXT_ROWS, text_targets

        self.task, self.suite = scene.task, scene.suite
        self.episode.append(episode)
        for name, text in zip(TEXT_ROWS, text_targets(annotation.model_dump()), strict=True):
            self.texts.setdefault(name, []).append(text)
        self.qpos.append(scene.qpos)
        self.qvel.append(scene.qvel)

    def report(self) -> dict[str, Any] | None:
        """:func:`text_information` of the frames added (None if none)."""
        if not self.episode:
            return None
        state, kinds = state_matrix(model_joints(self.task, self.suite), np.stack(self.qpos), np.stack(self.qvel))
        return text_information(self.texts, np.asarray(self.episode), state, kinds)

"""Every random stream of the evaluate stage, derived from ``evaluate.seed`` by name.

Streams are keyed by a stream name, the task (by CRC32, so adding a task changes no other task's
numbers) and an index; collect's streams derive from ``collect.seed`` with other keys, so
held-out episodes never repeat pretraining episodes even when the two seeds are equal.
"""

from __future__ import annotations

from pipeline.common import seeding

_STREAMS = {
    "heldout": 11,
    "random_init": 12,
    "agent": 13,
    "train_env": 14,
    "eval_env": 15,
    "explore": 16,
    "replay": 17,
    "bootstrap": 18,
}


def derive_seed(seed: int, stream: str, task: str = "", index: int = 0) -> int:
    """A 31-bit seed for ``stream`` of ``task`` (its ``index``-th member), from the stage's ``seed``."""
    return seeding.derive_seed(seed, 0x5E7A1, _STREAMS[stream], task, index)

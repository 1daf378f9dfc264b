"""Seeds of named random streams, derived from one base seed: the one derivation every stage uses.

A stream is named by a key path of numbers and strings (strings by CRC32, so a new task or stream
changes no other stream's numbers); numpy's ``SeedSequence`` hashes the path, so neighbouring keys
give unrelated seeds. Each stage keeps its own table of stream ids (its namespace).
"""

from __future__ import annotations

import zlib

import numpy as np


def derive_seed(seed: int, *key: int | str) -> int:
    """A 31-bit seed (fits ``torch.manual_seed``, gym and dm_control) for the stream ``key`` of ``seed``."""
    words = [int(seed)] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in key]
    return int(np.random.SeedSequence(words).generate_state(1)[0] >> 1)

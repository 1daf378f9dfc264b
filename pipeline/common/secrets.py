"""Secrets (API keys, tokens) come from the environment only, and never reach an output.

A :class:`Redactor` holds the values of named environment variables and replaces each one, wherever
it appears in a text, by ``[redacted $NAME]``: the annotate backends pass every answer, error body and
error message through it before anything is stored, cached or logged, so a server that echoes the key
cannot put it into annotation files, the annotate cache or a dataset. :meth:`Redactor.find_in_file`
scans a file's bytes (in chunks, a secret split across two chunks included) so that ``push`` can refuse
a dataset that holds one, naming the file.

Values shorter than :data:`MIN_SECRET_CHARS` are not treated as secrets: a local server's placeholder
key (vLLM's ``EMPTY``) is no secret, and replacing a short word would mangle ordinary text.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from pipeline.common.errors import UserError

#: Shortest environment value treated as a secret (characters).
MIN_SECRET_CHARS = 8
_CHUNK = 1 << 20


class SecretInOutput(UserError):
    """A file about to leave this machine holds the value of a secret environment variable."""


class Redactor:
    """The secrets held by environment variables ``names``, read when the redactor is made."""

    def __init__(self, names: Iterable[str]) -> None:
        self.secrets: dict[str, str] = {}  # value -> the variable's name
        for name in dict.fromkeys(names):
            value = os.environ.get(name, "").strip()
            if len(value) >= MIN_SECRET_CHARS:
                self.secrets.setdefault(value, name)
        # longest first: a secret that contains another is replaced whole
        self._ordered = sorted(self.secrets, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def __call__(self, text: str | None) -> str | None:
        """``text`` with every secret replaced by ``[redacted $NAME]`` (None stays None)."""
        if text is None or not self._ordered:
            return text
        for value in self._ordered:
            if value in text:
                text = text.replace(value, f"[redacted ${self.secrets[value]}]")
        return text

    def find_in_file(self, path: str | Path) -> str | None:
        """The name of the variable whose secret occurs in ``path``'s bytes, or None."""
        if not self._ordered:
            return None
        needles = [(value.encode(), name) for value, name in self.secrets.items()]
        overlap = max(len(n) for n, _ in needles) - 1
        tail = b""
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                window = tail + chunk
                for needle, name in needles:
                    if needle in window:
                        return name
                tail = window[-overlap:] if overlap else b""
        return None

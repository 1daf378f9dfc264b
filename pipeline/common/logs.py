"""Logging and progress bars: plain ``logging`` everywhere, tqdm on long loops."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def setup_logging(level: str = "INFO") -> None:
    """Configure the root logger once: ``time level name: message`` on stderr."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("urllib3", "httpx", "filelock", "PIL", "matplotlib", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def progress(
    iterable: Iterable[T] | None = None, *, desc: str, total: int | None = None, unit: str = "it"
) -> Iterator[T] | tqdm:
    """A tqdm progress bar; refreshes at most every 2 s when stderr is not a terminal (DVC, CI)."""
    interactive = sys.stderr.isatty()
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        mininterval=0.1 if interactive else 2.0,
        dynamic_ncols=True,
        file=sys.stderr,
        leave=interactive,
    )

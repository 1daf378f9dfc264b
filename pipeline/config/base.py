"""Shared base class, value types and helpers for the typed params sections.

Every section is a pydantic model that forbids unknown keys, so a typo in
``params.yaml`` stops the run with the key named instead of being ignored.

Every numeric or boolean field uses one of the strict types below instead of a bare
``int`` / ``float`` / ``bool``, because pydantic's default (lax) mode silently coerces
junk: ``true`` became the integer 1, ``"2"`` the integer 2, ``1e19`` a seed that numpy
then refused mid-run, and ``.inf`` a timeout that never expires.

- :data:`Int`: a whole number written as one (``3``); refuses booleans, strings and floats
  (``3.0``, ``1e3``).
- :data:`Seed`: an :data:`Int` from 0 to ``2**32 - 1``, the range every consumer accepts
  (``numpy.random.seed`` is the narrowest).
- :data:`Float`: a finite number; refuses booleans, ``.inf`` and ``.nan``. Integers are
  accepted (``1`` means 1.0), and so are numeric strings, because YAML 1.1 (PyYAML) reads
  ``1e-3`` (no dot) as the string ``"1e-3"``.
- :data:`Bool`: ``true`` or ``false``; refuses ``1``, ``0`` and strings such as ``"yes"``.
"""

from __future__ import annotations

import numbers
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict
from pydantic.types import AllowInfNan
from pydantic_core import PydanticCustomError

#: Where a torch computation runs. ``auto`` picks CUDA when present, else the CPU.
DeviceName = str

#: What to do when a model's weights cannot be found and cannot be downloaded.
#: ``error`` stops with a message that says which file to put where; ``random``
#: initialises the model randomly, logs it loudly and records it in provenance.
OnMissing = Literal["error", "random"]

#: Seeds are below this (exclusive): ``numpy.random.seed`` accepts 0 .. 2**32 - 1.
SEED_LIMIT = 2**32


def _kind(value: object) -> str:
    """How a refused value reads in an error message ('a boolean', 'a string', ...)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        if value.strip().lstrip("+-").isdigit():
            return "a string (drop the quotes)"
        try:
            float(value)
        except ValueError:
            return "a string"
        # PyYAML follows YAML 1.1, which reads an exponent without a decimal point as text.
        return "a string (YAML reads a number such as 1e30 as text: write it out in digits)"
    if isinstance(value, numbers.Integral):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    return f"a value of type {type(value).__name__}"


def _whole_number(value: object) -> object:
    """Let only integers through (``numbers.Integral`` such as numpy ints too, never bool)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    raise PydanticCustomError(
        "strict_int",
        "Input should be a valid integer, a whole number without quotes or a decimal point (e.g. 3), not {kind}",
        {"kind": _kind(value)},
    )


def _seed_range(value: int) -> int:
    if not 0 <= value < SEED_LIMIT:
        raise PydanticCustomError(
            "seed_range",
            "a seed is an integer from 0 to {top} (2**32 - 1, the most numpy.random.seed accepts)",
            {"top": SEED_LIMIT - 1},
        )
    return value


def _not_bool(value: object) -> object:
    if isinstance(value, bool):
        raise PydanticCustomError("strict_float", "Input should be a finite number (e.g. 0.5), not a boolean")
    return value


def _true_or_false(value: object) -> object:
    if isinstance(value, bool):
        return value
    raise PydanticCustomError(
        "strict_bool", "Input should be true or false (without quotes), not {kind}", {"kind": _kind(value)}
    )


#: A strict integer: see the module docstring.
Int = Annotated[int, BeforeValidator(_whole_number)]
#: A strict integer seed in 0 .. 2**32 - 1.
Seed = Annotated[int, BeforeValidator(_whole_number), AfterValidator(_seed_range)]
#: A finite float (no bool, inf or nan).
Float = Annotated[float, AllowInfNan(False), BeforeValidator(_not_bool)]
#: A strict boolean (true / false only).
Bool = Annotated[bool, BeforeValidator(_true_or_false)]


class Section(BaseModel):
    """Base for every params section: strict keys, no silent coercion of junk."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

"""Typed, validated view of ``params.yaml``: the single source of truth.

One section per stage, so DVC's per-key param tracking reruns exactly the
stages whose section changed. :func:`load_params` validates the whole file
before any stage does work; a bad key, type or value raises
:class:`ParamsError` naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.common.errors import UserError
from pipeline.config.annotate import AnnotateParams
from pipeline.config.base import Section
from pipeline.config.collect import CollectParams, PolicyParams
from pipeline.config.encode import EncodeParams
from pipeline.config.evaluate import EvaluateParams
from pipeline.config.finetune import FinetuneParams
from pipeline.config.flow import FlowParams
from pipeline.config.pretrain import PretrainParams
from pipeline.config.weights import WeightsParams

__all__ = [
    "AnnotateParams",
    "CollectParams",
    "EncodeParams",
    "EvaluateParams",
    "FinetuneParams",
    "FlowParams",
    "Params",
    "ParamsError",
    "PolicyParams",
    "PretrainParams",
    "WeightsParams",
    "load_params",
    "parse_params",
]

DEFAULT_PARAMS_PATH = Path("params.yaml")


class Params(Section):
    """The whole ``params.yaml``. Missing sections take their defaults."""

    weights: WeightsParams = WeightsParams()
    collect: CollectParams = CollectParams()
    flow: FlowParams = FlowParams()
    annotate: AnnotateParams = AnnotateParams()
    encode: EncodeParams = EncodeParams()
    pretrain: PretrainParams = PretrainParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluate: EvaluateParams = EvaluateParams()


class ParamsError(UserError, ValueError):
    """params.yaml is unreadable or holds a bad key, type or value."""


def _lookup(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return "<missing>"
    return data


def _allowed_keys(model: type[Section], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section that holds the unknown key at ``loc``."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, Section)):
            return []
        model = annotation
    return sorted(model.model_fields)


def _data_loc(raw: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The prefix of pydantic's ``loc`` that exists in the data (drops union tags like 'int')."""
    kept: list[Any] = []
    node = raw
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            break
        kept.append(part)
    return tuple(kept)


def _format_error(source: str, raw: Any, exc: ValidationError) -> str:
    problems: dict[str, list[str]] = {}
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            key = ".".join(str(p) for p in loc)
            allowed = ", ".join(_allowed_keys(Params, loc)) or "none"
            problems.setdefault(f"unknown key '{key}'", []).append(f"allowed keys here: {allowed}")
            continue
        data_loc = _data_loc(raw, loc)
        if err["type"] != "missing":
            loc = data_loc
        key = ".".join(str(p) for p in loc) or "<root>"
        head = f"{key} = {_lookup(raw, loc)!r}" if err["type"] != "missing" else f"{key} is required"
        problems.setdefault(head, []).append(err["msg"])
    lines = [f"{source}: {len(problems)} invalid param(s); fix them before running:"]
    lines += [f"  - {head}: {'; or '.join(msgs)}" for head, msgs in problems.items()]
    return "\n".join(lines)


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate an already-loaded mapping (e.g. ``yaml.safe_load`` output)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_format_error(source, raw, exc)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping naming a key twice (PyYAML keeps the last silently; DVC
    refuses the same file)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"the key {key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_params(path: str | Path = DEFAULT_PARAMS_PATH) -> Params:
    """Read and validate ``params.yaml``; raises :class:`ParamsError` on any problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found (run from the project root or pass --params PATH)") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw, source=str(path))

"""params.yaml validation: every kind of bad input names the key, the value and what is allowed."""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from pipeline.config import Params, ParamsError, load_params, parse_params
from pipeline.config.base import SEED_LIMIT, Section

ROOT = Path(__file__).resolve().parents[1]


def test_project_params_file_is_valid_and_complete() -> None:
    params = load_params(ROOT / "params.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    # Every section of the schema is spelled out in the file, so users see every knob.
    assert set(raw) == set(Params.model_fields)
    assert params.collect.tasks


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("")
    assert load_params(path) == Params()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"collect": {"episods": 3}}, ["unknown key 'collect.episods'", "episodes_per_task"]),
        ({"bogus": {}}, ["unknown key 'bogus'", "collect", "pretrain"]),
        (
            {"collect": {"policy": {"kind": "foo"}}},
            ["collect.policy.kind = 'foo'", "'random', 'noisy' or 'checkpoint'"],
        ),
        ({"flow": {"batch_size": "lots"}}, ["flow.batch_size = 'lots'", "valid integer"]),
        ({"collect": {"episodes_per_task": 0}}, ["collect.episodes_per_task = 0", "greater than or equal to 1"]),
        ({"collect": {"image_size": 4096}}, ["collect.image_size = 4096", "less than or equal to 1024"]),
        ({"collect": {"camera": 1.5}}, ["collect.camera = 1.5", "valid integer", "valid string"]),
        ({"encode": {"val_fraction": 1.0}}, ["encode.val_fraction = 1.0", "less than 1"]),
        ({"weights": {"on_missing": "ignore"}}, ["weights.on_missing = 'ignore'", "'error' or 'random'"]),
        ({"collect": 5}, ["collect = 5", "dictionary"]),
        (
            {"pretrain": {"paths": "semantic", "flow_input": True}},
            ["pretrain", "flow_input: true feeds the motion path"],
        ),
        (
            {"pretrain": {"interaction_kind": "gated", "semantic_stride": 2}},
            ["pretrain", "interaction_kind: gated exchanges per pixel", "semantic_stride: 1"],
        ),
        (
            {"pretrain": {"depth": 1, "semantic_stride": 2}},
            ["pretrain", "depth: 1 does not have", "semantic_stride: 1"],
        ),
        ({"pretrain": {"semantic_stride": 3}}, ["pretrain.semantic_stride = 3", "1 or 2"]),
        ({"pretrain": {"padding": 2}}, ["pretrain.padding = 2", "0 or 1"]),
    ],
)
def test_bad_value_names_key_value_and_allowed(raw: dict, expected: list[str]) -> None:
    _assert_refused(raw, expected)


def _assert_refused(raw: dict, expected: list[str]) -> None:
    """``raw`` raises ParamsError whose message holds every fragment of ``expected``."""
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    message = str(info.value)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


def test_several_errors_are_reported_together() -> None:
    with pytest.raises(ParamsError) as info:
        parse_params({"collect": {"episodes_per_task": -1, "workers": 0}})
    assert "2 invalid param(s)" in str(info.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("collect: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="mapping of sections"):
        load_params(top)


def test_sections_are_immutable() -> None:
    params = Params()
    with pytest.raises(ValidationError, match="Instance is frozen"):
        params.collect.seed = 3  # type: ignore[misc]


# --- strict values (issue 18: `true` and "2" were integers, .inf a timeout, 1e30 a seed) ---------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"collect": {"episodes_per_task": True}},
            ["collect.episodes_per_task = True", "valid integer", "not a boolean"],
        ),
        ({"flow": {"batch_size": "2"}}, ["flow.batch_size = '2'", "valid integer", "drop the quotes"]),
        ({"pretrain": {"steps": 300.0}}, ["pretrain.steps = 300.0", "valid integer", "not a float"]),
        ({"collect": {"camera": True}}, ["collect.camera = True", "valid integer", "not a boolean", "valid string"]),
        ({"annotate": {"timeout_s": math.inf}}, ["annotate.timeout_s = inf", "finite number"]),
        ({"annotate": {"timeout_s": math.nan}}, ["annotate.timeout_s = nan", "finite number"]),
        ({"finetune": {"encoder_lr": math.inf}}, ["finetune.encoder_lr = inf", "finite number"]),
        ({"encode": {"val_fraction": True}}, ["encode.val_fraction = True", "finite number", "not a boolean"]),
        ({"collect": {"depth": 1}}, ["collect.depth = 1", "true or false", "not an integer"]),
        ({"weights": {"offline": "yes"}}, ["weights.offline = 'yes'", "true or false", "not a string"]),
        ({"encode": {"seed": 1e30}}, ["encode.seed = 1e+30", "valid integer", "not a float"]),
        ({"encode": {"seed": SEED_LIMIT}}, [f"encode.seed = {SEED_LIMIT}", "from 0 to 4294967295"]),
        ({"pretrain": {"seed": -1}}, ["pretrain.seed = -1", "from 0 to 4294967295"]),
    ],
)
def test_strict_values_are_refused_with_key_value_and_allowed(raw: dict, expected: list[str]) -> None:
    _assert_refused(raw, expected)


@pytest.mark.parametrize("text", ["1e30", "1.0e+30", "10000000000000000000000000000000"])
def test_huge_seed_in_params_file_is_refused_before_any_stage(tmp_path: Path, text: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(f"encode:\n  seed: {text}\n")
    with pytest.raises(ParamsError, match=r"encode\.seed = ") as info:
        load_params(path)
    if text == "1e30":  # PyYAML (YAML 1.1) reads it as the string '1e30': the message says so
        assert "write it out in digits" in str(info.value)


def test_seed_limit_is_what_numpy_accepts() -> None:
    params = parse_params({s: {"seed": SEED_LIMIT - 1} for s in ("collect", "encode", "pretrain", "finetune")})
    np.random.seed(params.encode.seed)
    np.random.seed(params.pretrain.seed)
    with pytest.raises(ValueError):
        np.random.seed(SEED_LIMIT)


def test_lenient_where_yaml_needs_it(tmp_path: Path) -> None:
    """Integers stand for floats, and YAML 1.1's string '1e-3' (no dot) is read as a number."""
    path = tmp_path / "params.yaml"
    path.write_text("finetune:\n  lr: 1e-3\n  gamma: 1\ncollect:\n  camera: track\n")
    params = load_params(path)
    assert params.finetune.lr == 0.001 and isinstance(params.finetune.lr, float)
    assert params.finetune.gamma == 1.0
    assert params.collect.camera == "track"


def _scalar_kinds(annotation: Any) -> set[type]:
    """The plain types a field's annotation admits: ``Int | str`` -> {int, str},
    ``Float | None`` -> {float, NoneType}."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    args = typing.get_args(annotation)
    if args and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return set().union(*(_scalar_kinds(a) for a in args))
    return {annotation} if isinstance(annotation, type) else set()


def _leaf_fields(model: type[Section], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], set[type]]]:
    """(key path, admitted plain types) of every non-section field of ``model``, recursively."""
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            yield from _leaf_fields(field.annotation, (*prefix, name))
        else:
            yield (*prefix, name), _scalar_kinds(field.annotation)


def _nested(path: tuple[str, ...], value: Any) -> dict:
    raw: Any = value
    for part in reversed(path):
        raw = {part: raw}
    return raw


def _junk_for(kinds: set[type]) -> list[Any]:
    """Values lax pydantic coerced into a field of these types, and that must now be refused."""
    junk: list[Any] = []
    if bool in kinds:
        junk += [1, "true"]
    if int in kinds:
        junk += [True, 2.0] + ([] if str in kinds else ["2"])  # "2" is a valid camera name
    if float in kinds:
        junk += [True, math.inf, -math.inf, math.nan]
    return junk


LEAVES = list(_leaf_fields(Params))


def test_every_number_and_switch_is_strict() -> None:
    """Every bool, int and float field of every section (optional ones too) refuses the junk lax pydantic took."""
    checked = 0
    for path, kinds in LEAVES:
        for junk in _junk_for(kinds):
            with pytest.raises(ParamsError) as info:
                parse_params(_nested(path, junk))
            assert f"{'.'.join(path)} = {junk!r}" in str(info.value)
            checked += 1
    assert checked > 100  # the sweep really covered the sections


@pytest.mark.parametrize(
    "section, field, registry",
    [
        ("flow", "backend", "pipeline.flow.registry:BACKENDS"),
        ("annotate", "backend", "pipeline.annotate.base:BACKENDS"),
        ("encode", "clip_backend", "pipeline.encode.clip:BACKENDS"),
        ("pretrain", "interaction_kind", "models.interaction:INTERACTIONS"),
    ],
)
def test_a_param_that_picks_a_backend_admits_exactly_its_registry_names(
    section: str, field: str, registry: str
) -> None:
    """The params' Literal and the registry are two lists of one set of names: a backend added to
    one and not the other would be refused by validation or fail at lookup."""
    import importlib

    module, name = registry.split(":")
    entries = getattr(importlib.import_module(module), name)
    annotation = Params.model_fields[section].annotation.model_fields[field].annotation
    assert set(typing.get_args(annotation)) == set(entries), f"{section}.{field}"


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path) -> None:
    """Reliability kind 9: PyYAML keeps the last of two equal keys silently, where DVC refuses the file."""
    from pipeline.config import ParamsError, load_params

    path = tmp_path / "params.yaml"
    path.write_text("annotate:\n  every_k: 2\n  prompt: Describe {task}.\n  every_k: 3\n")
    with pytest.raises(ParamsError, match=r"'every_k' is given twice \(lines 2 and 4\)"):
        load_params(path)
    path.write_text("annotate:\n  <<: {every_k: 2}\n  every_k: 3\n")  # a merged key may be overridden
    assert load_params(path).annotate.every_k == 3


@pytest.mark.parametrize("prompt", ["{task.__class__}", "{task[0]}", "{task:>999999999}", "{task!r}", "{}", "{0}"])
def test_a_prompt_may_hold_only_a_plain_task_field(prompt: str) -> None:
    """Reliability kinds 5 and 9: attribute access, indexing, conversions and format specs (padding to any width)."""
    from pipeline.config import ParamsError, parse_params

    with pytest.raises(ParamsError, match=r"only \{task\} may be used, plain"):
        parse_params({"annotate": {"prompt": f"Describe {prompt}."}})
    assert parse_params({"annotate": {"prompt": "Describe {task} {{literally}}."}}).annotate.prompt


def test_evaluate_episodes_shorter_than_the_action_repeat_are_refused() -> None:
    from pipeline.config import ParamsError, parse_params

    with pytest.raises(ParamsError, match=r"episode_frames \(4\) is below the action repeat"):
        parse_params({"evaluate": {"tasks": ["cartpole-swingup"], "episode_frames": 4}})
    assert parse_params({"evaluate": {"tasks": ["cartpole-swingup"], "episode_frames": 8}}).evaluate.episode_frames == 8

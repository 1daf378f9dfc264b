"""params.yaml validation: every kind of bad input names the key, the value and what is allowed."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import Params, ParamsError, load_params, parse_params

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
        ({"collect": {"policy": {"kind": "foo"}}}, ["collect.policy.kind = 'foo'", "'random', 'noisy' or 'checkpoint'"]),
        ({"flow": {"batch_size": "lots"}}, ["flow.batch_size = 'lots'", "valid integer"]),
        ({"collect": {"episodes_per_task": 0}}, ["collect.episodes_per_task = 0", "greater than or equal to 1"]),
        ({"collect": {"image_size": 4096}}, ["collect.image_size = 4096", "less than or equal to 1024"]),
        ({"collect": {"camera": 1.5}}, ["collect.camera = 1.5", "valid integer", "valid string"]),
        ({"encode": {"val_fraction": 1.0}}, ["encode.val_fraction = 1.0", "less than 1"]),
        ({"weights": {"on_missing": "ignore"}}, ["weights.on_missing = 'ignore'", "'error' or 'random'"]),
        ({"collect": 5}, ["collect = 5", "dictionary"]),
    ],
)
def test_bad_value_names_key_value_and_allowed(raw: dict, expected: list[str]) -> None:
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
    with pytest.raises(Exception):
        params.collect.seed = 3  # type: ignore[misc]

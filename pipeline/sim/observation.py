"""The observation facts a backbone was pretrained on: one contract for its writer and its readers.

A backbone learns the pixels of one way of rendering a task: the frame size, the camera, the
render mode, the frames per stack, and the gap between consecutive frames of a stack (the
action repeat: with repeat R, consecutive frames are R simulator steps apart). Used on other
pixels it sees motion and images it never learned, and nothing in the weights says so.

The pretrain stage records the facts of its dataset (``stats.json`` ->
``provenance.tasks.<task>.collect``) in the metadata of both checkpoints it writes, as
``meta["observation"]``::

    {"action_repeat": {task: int}, "image_size": int, "camera": {task: int | str},
     "render_mode": {task: str}, "frame_stack": int}

The finetune and evaluate stages read it back (:meth:`ObservationMeta.read`) and refuse, before
any work, a run whose observations differ (:meth:`ObservationMeta.mismatches` names both
values), unless their ``allow_mismatch`` param turns the refusal into a recorded warning.

Compatibility: a checkpoint without ``meta.observation`` (written before it existed) is accepted
unchecked, and so is any fact it does not record. ``action_repeat``, ``camera`` and
``render_mode`` may also be one value for every task (the form evaluate read before this module).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.common.errors import UserError

#: The key of the checkpoint metadata that holds the facts.
OBSERVATION_KEY = "observation"

PerTask = Mapping[str, Any]


class ObservationMetaError(UserError):
    """A checkpoint's ``meta.observation`` is malformed (hand-edited or damaged)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_camera(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, str) and bool(value))


def _is_repeat(value: Any) -> bool:
    return _is_int(value) and value >= 1


def _is_mode(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


@dataclass(frozen=True)
class ObservationMeta:
    """What a backbone was pretrained on; None (or a task missing from a mapping) means unknown.

    Attributes:
        action_repeat: task -> simulator steps per agent step of its frames (or one int for all).
        image_size: side of the square RGB frames, pixels.
        camera: task -> camera id (int, -1 the free camera) or name (or one value for all).
        render_mode: task -> ``fast`` | ``faithful`` (or one value for all).
        frame_stack: frames per observation (channels = 3 x frame_stack).
    """

    action_repeat: PerTask | int | None = None
    image_size: int | None = None
    camera: PerTask | int | str | None = None
    render_mode: PerTask | str | None = None
    frame_stack: int | None = None

    # --- writing -----------------------------------------------------------------------------
    @classmethod
    def from_dataset(cls, stats: Mapping[str, Any], *, image_size: int, frame_stack: int) -> ObservationMeta:
        """The facts of a dataset (its ``stats.json`` as a dict) read at ``frame_stack`` frames per
        observation: per-task action repeat, camera and render mode from
        ``provenance.tasks.<task>.collect`` (tasks without a record are left out), the frame size
        ``image_size`` (pixels) as the dataset's frames have it."""
        tasks = (stats.get("provenance") or {}).get("tasks") or {}
        repeat, camera, mode = {}, {}, {}
        for task in sorted(tasks):
            collect = (tasks[task] or {}).get("collect") or {}
            if "action_repeat" in collect:
                repeat[task] = int(collect["action_repeat"])
            if "camera" in collect:
                camera[task] = collect["camera"]
            if "render_mode" in collect:
                mode[task] = str(collect["render_mode"])
        return cls(
            action_repeat=repeat,
            image_size=int(image_size),
            camera=camera,
            render_mode=mode,
            frame_stack=int(frame_stack),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able ``meta["observation"]`` record (unknown facts left out, tasks sorted)."""
        out: dict[str, Any] = {}
        for key in ("action_repeat", "image_size", "camera", "render_mode", "frame_stack"):
            value = getattr(self, key)
            if value is not None:
                out[key] = {t: value[t] for t in sorted(value)} if isinstance(value, Mapping) else value
        return out

    # --- reading -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "checkpoint") -> ObservationMeta:
        """Parse a ``meta["observation"]`` record; ``source`` names its file in errors.

        Raises:
            ObservationMetaError: not a dict, an unknown key, or a value of the wrong type.
        """
        fix = (
            "rerun the pretrain stage to rewrite it, "
            f"or delete meta.{OBSERVATION_KEY} from {source} to use the checkpoint unchecked"
        )
        if not isinstance(raw, Mapping):
            raise ObservationMetaError(
                f"{source}: meta.{OBSERVATION_KEY} is {type(raw).__name__}, expected a dict; {fix}"
            )
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ObservationMetaError(
                f"{source}: meta.{OBSERVATION_KEY} has unknown keys {unknown} "
                f"(known: {sorted(cls.__dataclass_fields__)}); {fix}"
            )
        checks = {
            "action_repeat": (_is_repeat, True, "an integer >= 1 or {task: integer >= 1}"),
            "image_size": (_is_repeat, False, "an integer >= 1 (pixels)"),
            "camera": (_is_camera, True, "a camera id (integer) or name, or {task: id or name}"),
            "render_mode": (_is_mode, True, "a render mode ('fast' or 'faithful') or {task: mode}"),
            "frame_stack": (_is_repeat, False, "an integer >= 1"),
        }
        values: dict[str, Any] = {}
        for key, (ok, per_task, expected) in checks.items():
            value = raw.get(key)
            if value is None:
                continue
            if per_task and isinstance(value, Mapping):
                good = all(isinstance(t, str) and ok(v) for t, v in value.items())
                value = dict(value)
            else:
                good = ok(value)
            if not good:
                raise ObservationMetaError(
                    f"{source}: meta.{OBSERVATION_KEY}.{key} = {value!r}, expected {expected}; {fix}"
                )
            values[key] = value
        return cls(**values)

    @classmethod
    def read(cls, folder: str | Path) -> ObservationMeta | None:
        """The facts recorded in the checkpoint folder's ``config.json`` metadata, or None when it
        records none (a checkpoint older than this contract)."""
        from models.checkpoint import CONFIG_FILE, read_checkpoint_config

        raw = read_checkpoint_config(Path(folder)).get("meta", {}).get(OBSERVATION_KEY)
        if raw is None:
            return None
        return cls.from_dict(raw, source=str(Path(folder) / CONFIG_FILE))

    def for_task(self, key: str, task: str) -> Any:
        """The recorded value of fact ``key`` for ``task``, or None when unknown.

        A per-task fact of a task the backbone was not pretrained on is unknown, except the
        render mode: it is a property of the pixels rather than of one task's model (a camera id
        means something only within a task's model, an action repeat is chosen per task), so when
        every recorded task shares one mode, that mode is what the backbone knows.
        """
        value = getattr(self, key)
        if not isinstance(value, Mapping):
            return value
        if task in value:
            return value[task]
        if key == "render_mode" and len(set(value.values())) == 1:
            return next(iter(value.values()))
        return None

    def mismatches(
        self,
        task: str,
        *,
        who: str,
        action_repeat: int | None = None,
        image_size: int | None = None,
        camera: int | str | None = None,
        render_mode: str | None = None,
        frame_stack: int | None = None,
    ) -> list[str]:
        """One line per fact where the recorded value and the run's differ, naming both.

        Args:
            task: the task the run uses the backbone on.
            who: how the run is named in the lines (``evaluation``, ``finetune``).
            action_repeat, image_size, camera, render_mode, frame_stack: the run's values; None
                leaves that fact unchecked. Facts the backbone does not record are not checked.
        """
        # fact -> (label, how the backbone's value reads, how the run's value reads)
        forms = {
            "action_repeat": ("action repeat", "at {}", "{}"),
            "image_size": ("image size", "at {} px", "{} px"),
            "camera": ("camera", "on camera {!r}", "camera {!r}"),
            "render_mode": ("render mode", "on {!r} frames", "{!r}"),
            "frame_stack": ("frame stack", "on {}-frame stacks", "{} frames"),
        }
        run = {
            "action_repeat": action_repeat,
            "image_size": image_size,
            "camera": camera,
            "render_mode": render_mode,
            "frame_stack": frame_stack,
        }
        lines = []
        for key, used in run.items():
            recorded = self.for_task(key, task)
            if used is None or recorded is None or recorded == used:
                continue
            label, backbone_form, run_form = forms[key]
            lines.append(
                f"{label}: backbone pretrained {backbone_form.format(recorded)}, "
                f"{who} of {task} uses {run_form.format(used)}"
            )
        return lines

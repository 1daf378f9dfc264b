"""Behaviour policies that drive an environment while the collect stage records it.

Interface: ``reset(rng, first)`` at the start of an episode, then ``act(result) -> action``
after every frame (``result`` is the env's :class:`StepResult`; the action is (A,) float32
in env units, inside ``[action_low, action_high]``). A new policy is one class and one line
in :data:`POLICIES`.

* ``random``: uniform in the action box.
* ``noisy``: an Ornstein-Uhlenbeck process in normalised action units (the box mapped to
  [-1, 1]): ``x[t+1] = (1 - theta) * x[t] + sigma * eps``, ``eps ~ N(0, 1)``, with ``sigma``
  chosen so the stationary std of ``x`` is ``noise_scale``; ``x[0]`` is drawn from the
  stationary law. Actions are ``clip(x, -1, 1)`` mapped to the box: smooth, temporally
  correlated exploration (``theta = 1`` gives white noise).
* ``checkpoint``: an actor saved by the finetune stage with :func:`models.checkpoint.save_module`.
  Its ``config.json`` meta is declared by :class:`models.actor.ActorMeta` (``task``,
  ``action_dim``, ``frame_stack``, ``image_size``, ``action_repeat``, ...); the module has
  ``act(obs) -> actions`` mapping a uint8 tensor (B, 3 * frame_stack, H, W) (oldest frame first;
  channels R, G, B per frame) to deterministic actions in [-1, 1] of shape (B, A). The policy
  keeps the frame stack itself (:class:`~pipeline.collect.envs.wrappers.FrameStacker`: at reset
  it holds ``frame_stack`` copies of the first frame) and maps actions to the box with
  :func:`~pipeline.collect.envs.wrappers.scale_action`, the conventions of every stage.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pipeline.collect.envs.wrappers import FrameStacker, scale_action
from pipeline.collect.errors import PolicyError
from pipeline.common.io import sha256_of

if TYPE_CHECKING:
    from models.actor import ActorMeta
    from pipeline.collect.envs.base import StepResult
    from pipeline.config.collect import PolicyParams

log = logging.getLogger(__name__)


class Policy(Protocol):
    name: str

    def reset(self, rng: np.random.Generator, first: StepResult) -> None: ...

    def act(self, result: StepResult) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]:
        """JSON-able description recorded in each episode's meta (no absolute paths)."""
        ...


class _BoxPolicy:
    def __init__(self, low: np.ndarray, high: np.ndarray) -> None:
        self.low = np.asarray(low, dtype=np.float32)
        self.high = np.asarray(high, dtype=np.float32)

    def _to_box(self, unit: np.ndarray) -> np.ndarray:
        """Map normalised actions in [-1, 1] to the action box (float32): :func:`scale_action`."""
        return scale_action(unit, self.low, self.high)


class RandomPolicy(_BoxPolicy):
    """Uniform random actions in the box."""

    name = "random"

    def __init__(self, params: PolicyParams, low: np.ndarray, high: np.ndarray, **_: Any) -> None:
        super().__init__(low, high)
        self._rng = np.random.default_rng(0)

    def reset(self, rng: np.random.Generator, first: StepResult) -> None:
        self._rng = rng

    def act(self, result: StepResult) -> np.ndarray:
        return self._to_box(self._rng.uniform(-1.0, 1.0, size=self.low.shape))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name}


class NoisyPolicy(_BoxPolicy):
    """Ornstein-Uhlenbeck exploration (module docstring)."""

    name = "noisy"

    def __init__(self, params: PolicyParams, low: np.ndarray, high: np.ndarray, **_: Any) -> None:
        super().__init__(low, high)
        self.scale = float(params.noise_scale)
        self.theta = float(params.noise_theta)
        # Stationary variance of x[t+1] = a x[t] + s eps is s^2 / (1 - a^2).
        self.sigma = self.scale * float(np.sqrt(1.0 - (1.0 - self.theta) ** 2))
        self._rng = np.random.default_rng(0)
        self._x = np.zeros(self.low.shape)

    def reset(self, rng: np.random.Generator, first: StepResult) -> None:
        self._rng = rng
        self._x = rng.normal(0.0, self.scale, size=self.low.shape)

    def act(self, result: StepResult) -> np.ndarray:
        action = self._to_box(self._x)
        self._x = (1.0 - self.theta) * self._x + self.sigma * self._rng.normal(size=self.low.shape)
        return action

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, "noise_scale": self.scale, "noise_theta": self.theta}


def read_checkpoint_meta(path: str | Path) -> ActorMeta:
    """The meta of an actor checkpoint folder (:class:`models.actor.ActorMeta`, the one declaration
    its writer and this reader share); raises :class:`PolicyError` if it is not one."""
    from models.actor import ActorMeta
    from models.checkpoint import CheckpointError, read_checkpoint_config

    try:
        record = read_checkpoint_config(path)
    except FileNotFoundError as exc:
        raise PolicyError(f"collect.policy.checkpoint = {str(path)!r}: {exc}") from None
    except ValueError as exc:
        raise PolicyError(f"collect.policy.checkpoint = {str(path)!r}: unreadable config.json ({exc})") from None
    try:
        return ActorMeta.from_meta(record.get("meta") or {})
    except CheckpointError as exc:
        raise PolicyError(f"collect.policy.checkpoint = {str(path)!r}: {exc}") from None


def check_checkpoint(
    path: str | Path,
    *,
    task: str,
    action_dim: int,
    image_size: int,
    action_repeat: int,
    camera: int | str | None = None,
    render_mode: str | None = None,
) -> ActorMeta:
    """Check that the actor at ``path`` can drive ``task``; return its meta.

    Raises:
        PolicyError: not an actor checkpoint, action size or image size mismatch (both named).
    """
    meta = read_checkpoint_meta(path)
    if meta.action_dim != action_dim:
        raise PolicyError(
            f"collect.policy.checkpoint = {str(path)!r} outputs {meta.action_dim} action dims "
            f"(trained on {meta.task}), but task {task} takes {action_dim}; use an actor trained on {task}"
        )
    if meta.image_size != image_size:
        raise PolicyError(
            f"collect.policy.checkpoint = {str(path)!r} sees {meta.image_size}x{meta.image_size} frames, "
            f"but collect.image_size is {image_size}; set collect.image_size to {meta.image_size}"
        )
    if meta.task != task:
        log.warning("actor checkpoint %s was trained on %s, collecting %s with it", path, meta.task, task)
    if meta.action_repeat != action_repeat:
        log.warning(
            "actor checkpoint %s was trained with action_repeat %s, collecting with %s",
            path,
            meta.action_repeat,
            action_repeat,
        )
    for key, value in (("camera", camera), ("render_mode", render_mode)):
        trained = getattr(meta, key)
        if value is not None and trained is not None and trained != value:
            log.warning("actor checkpoint %s was trained with %s %r, collecting with %r", path, key, trained, value)
    return meta


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run torch on ``n`` threads: fixed thread counts keep CPU results identical across runs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class CheckpointPolicy(_BoxPolicy):
    """A deterministic actor loaded from a finetune checkpoint (module docstring)."""

    name = "checkpoint"

    def __init__(
        self,
        params: PolicyParams,
        low: np.ndarray,
        high: np.ndarray,
        *,
        task: str,
        image_size: int,
        action_repeat: int,
        camera: int | str | None = None,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(low, high)
        import torch

        from models.checkpoint import WEIGHTS_FILE, CheckpointError, load_module

        if params.checkpoint is None:
            raise PolicyError(
                "collect.policy.kind is 'checkpoint' but collect.policy.checkpoint is not set; "
                "set it to the finetune stage's actor folder"
            )
        self.path = Path(params.checkpoint)
        self.meta = check_checkpoint(
            self.path,
            task=task,
            action_dim=int(self.low.shape[0]),
            image_size=image_size,
            action_repeat=action_repeat,
            camera=camera,
            render_mode=render_mode,
        )
        self.frame_stack = self.meta.frame_stack
        try:
            module, _ = load_module(self.path, map_location="cpu")
        except (CheckpointError, ImportError, AttributeError, TypeError, RuntimeError, OSError) as exc:
            raise PolicyError(
                f"collect.policy.checkpoint = {str(self.path)!r}: cannot load the actor ({type(exc).__name__}: {exc})"
            ) from exc
        if not callable(getattr(module, "act", None)):
            raise PolicyError(
                f"collect.policy.checkpoint = {str(self.path)!r}: {type(module).__name__} has no act(obs) method"
            )
        self.module = module.eval()
        self.weights_sha256 = sha256_of(self.path / WEIGHTS_FILE)
        self._torch = torch
        self._stack = FrameStacker(self.frame_stack)
        self._fresh = False

    def reset(self, rng: np.random.Generator, first: StepResult) -> None:
        self._stack.reset(first.frame)
        self._fresh = True  # the next act() sees ``first`` itself

    def act(self, result: StepResult) -> np.ndarray:
        obs = self._stack.obs() if self._fresh else self._stack.push(result.frame)
        self._fresh = False
        stack = obs[None]
        torch = self._torch
        with _torch_threads(1), torch.inference_mode():
            out = self.module.act(torch.from_numpy(np.ascontiguousarray(stack)))
        unit = out.detach().cpu().double().numpy().reshape(-1)
        if unit.shape != self.low.shape:
            raise PolicyError(
                f"collect.policy.checkpoint = {str(self.path)!r}: act() returned {unit.shape[0]} action dims, "
                f"expected {self.low.shape[0]}"
            )
        return self._to_box(unit)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.name,
            "checkpoint": str(self.path),
            "weights_sha256": self.weights_sha256,
            "checkpoint_task": self.meta.task,
            "frame_stack": self.frame_stack,
        }


#: ``collect.policy.kind`` -> policy class.
POLICIES: dict[str, type] = {
    "random": RandomPolicy,
    "noisy": NoisyPolicy,
    "checkpoint": CheckpointPolicy,
}


def make_policy(
    params: PolicyParams,
    low: np.ndarray,
    high: np.ndarray,
    *,
    task: str,
    image_size: int,
    action_repeat: int,
    camera: int | str | None = None,
    render_mode: str | None = None,
) -> Policy:
    """Build the behaviour policy ``params.kind`` for an action box ``[low, high]`` (A,) float32.

    ``task``, ``image_size``, ``action_repeat`` (and ``camera``, ``render_mode`` when given) are
    checked against a checkpoint's meta: sizes must match, the rest only warns.
    """
    try:
        cls = POLICIES[params.kind]
    except KeyError:
        raise PolicyError(f"collect.policy.kind = {params.kind!r}: expected one of {', '.join(POLICIES)}") from None
    return cls(
        params,
        low,
        high,
        task=task,
        image_size=image_size,
        action_repeat=action_repeat,
        camera=camera,
        render_mode=render_mode,
    )

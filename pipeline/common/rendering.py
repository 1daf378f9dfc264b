"""Headless MuJoCo rendering, set up in one place.

MuJoCo reads ``MUJOCO_GL`` when it is first imported, so :func:`setup_headless_rendering`
must run before ``mujoco``, ``dm_control`` or gymnasium's MuJoCo environments are
imported. It has two callers: the CLI at start-up, and :func:`pipeline.collect.make_env`
(through the environment package, before it imports a simulator backend) for library use
without the CLI. ``egl`` works out of the box on Debian with Mesa (software rendering on
CPU machines, the NVIDIA driver on GPU ones).
"""

from __future__ import annotations

import contextlib
import os


def setup_headless_rendering() -> str:
    """Default ``MUJOCO_GL`` (and PyOpenGL's platform) to ``egl`` unless the user chose one; return it.

    Also imports ``triton`` (when installed) before any GL context exists: importing it
    after Mesa's EGL context was created segfaults the process (Triton's bundled LLVM
    clashes with the LLVM Mesa's llvmpipe already loaded), and torchvision,
    ``torch._dynamo`` and transformers' generation all import it lazily.
    """
    backend = os.environ.setdefault("MUJOCO_GL", "egl")
    if backend in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    _preload_triton()
    return backend


def _preload_triton() -> None:
    # CPU-only torch builds ship without triton: nothing to clash with
    with contextlib.suppress(ImportError):
        import triton  # noqa: F401

"""Test-wide settings: offline, no analytics, few threads, headless rendering."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pipeline.common.rendering import setup_headless_rendering  # noqa: E402

# Sets MUJOCO_GL and preloads triton before any test creates a GL context (see the function).
setup_headless_rendering()


@pytest.fixture
def torch_one_thread():
    """Run torch on one thread: tiny models are fastest that way, and the CI machine has 2 cores."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)

# Two commands a fresh machine needs (nothing but Python 3.11 installed):
#   make repro   bootstrap the environment, then run the pipeline (dvc repro)
#   make test    bootstrap the environment, check the style (ruff), then run the test suite
# Bootstrapping installs uv, the system OpenGL (EGL) libraries MuJoCo renders
# with when they are missing, and the locked Python environment in .venv.

PYTHON ?= python3
# uv from PATH when there is one (also inside an activated .venv, which has no pip);
# otherwise as a module of $(PYTHON), installed with pip on first use.
UV := $(or $(shell command -v uv 2>/dev/null),$(PYTHON) -m uv)
export DVC_NO_ANALYTICS := 1
export UV_LINK_MODE := copy
# Write .pyc files: every DVC stage is a fresh process, and torch/open_clip imports are
# several times slower without them.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: bootstrap sysdeps repro lint test bench clean-venv

bootstrap: sysdeps .venv/.synced

sysdeps:
	@ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1' || { \
	  echo "installing MuJoCo's headless OpenGL libraries (libegl1 libgl1-mesa-dri)"; \
	  apt-get update -qq && apt-get install -y -qq libegl1 libgl1-mesa-dri; }

.venv/.synced: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --locked
	@touch $@

repro: bootstrap
	$(UV) run --locked dvc repro

# The house style (pyproject.toml [tool.ruff]): `ruff format .` and `ruff check --fix .` apply it.
lint: bootstrap
	$(UV) run --locked ruff check .
	$(UV) run --locked ruff format --check .

test: lint
	$(UV) run --locked pytest

clean-venv:
	rm -rf .venv

"""One place where model weights are found, downloaded, or (by policy) replaced by random init.

A weight *source* string, as written in a backend's ``weights`` param, is one of:

* ``random``: explicit random initialisation (no lookup at all);
* a local file or folder path (``~`` expanded);
* a name found in the weights cache folder (``weights.cache_dir``) or in one of
  the backend's own cache folders (e.g. ptlflow's ``$TORCH_HOME/hub/checkpoints``);
* ``hf://<repo_id>[@<revision>][/<filename>]``: a Hugging Face Hub repo (whole
  snapshot) or one file of it, downloaded when online;
* ``http://`` / ``https://`` URL, downloaded into the cache when online;
* a backend-specific name that the backend's ``downloader`` knows how to fetch.

When the source cannot be found and cannot be downloaded (offline, or the
download fails), ``on_missing`` decides: ``error`` raises
:class:`WeightsNotFoundError` saying exactly which file to put where;
``random`` logs a loud warning and returns a :class:`ResolvedWeights` with
``random_init=True``, whose :meth:`~ResolvedWeights.provenance` every stage
records in its outputs.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.common.errors import UserError
from pipeline.common.io import atomic_path, sha256_of

log = logging.getLogger(__name__)

RANDOM = "random"
_HF_RE = re.compile(r"^hf://(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?(?:/(?P<file>.+))?$")

#: Downloads a backend-specific source name into ``cache_dir``; returns the local path.
Downloader = Callable[[str, Path], Path]


class WeightsNotFoundError(UserError, FileNotFoundError):
    """Weights are missing and the policy is ``error``. The message says what to put where."""


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a model's weights come from, for loading and for provenance.

    ``path`` is ``None`` exactly when ``random_init`` is true.
    """

    what: str
    source: str
    path: Path | None
    random_init: bool
    reason: str
    sha256: str | None = None

    def provenance(self) -> dict[str, str | bool | None]:
        """JSON-ready record of the weights used, written into every output's provenance."""
        return {
            "what": self.what,
            "source": self.source,
            "path": str(self.path) if self.path else None,
            "sha256": self.sha256 if self.sha256 else ("random init" if self.random_init else None),
            "random_init": self.random_init,
            "reason": self.reason,
        }


def is_offline(offline_param: bool = False) -> bool:
    """True when downloads must not be attempted (param, ``SEMORE_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``)."""
    env = any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
        for v in ("SEMORE_OFFLINE", "HF_HUB_OFFLINE")
    )
    return offline_param or env


def cache_name(source: str) -> str:
    """File-system-safe name under which ``source`` is cached (``hf://a/b`` -> ``hf--a--b``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "--", source).strip("-")


def _download_hf(source: str, cache_dir: Path) -> Path:
    match = _HF_RE.match(source)
    if not match:
        raise ValueError(f"bad Hub source {source!r}: expected hf://<owner>/<repo>[@<revision>][/<filename>]")
    import huggingface_hub

    repo, rev, filename = match["repo"], match["rev"], match["file"]
    if filename:
        return Path(huggingface_hub.hf_hub_download(repo, filename, revision=rev, cache_dir=cache_dir / "hub"))
    return Path(huggingface_hub.snapshot_download(repo, revision=rev, cache_dir=cache_dir / "hub"))


def _download_url(source: str, cache_dir: Path) -> Path:
    target = cache_dir / cache_name(source)
    with (
        atomic_path(target) as tmp,
        urllib.request.urlopen(source, timeout=60) as response,  # noqa: S310 (user-given URL)
        open(tmp, "wb") as fh,
    ):
        for chunk in iter(lambda: response.read(1 << 20), b""):
            fh.write(chunk)
    return target


def resolve_weights(
    source: str,
    *,
    what: str,
    param_key: str,
    on_missing: Literal["error", "random"],
    cache_dir: str | Path,
    offline: bool = False,
    extra_cache_dirs: Iterable[Path] = (),
    extra_names: Iterable[str] = (),
    downloader: Downloader | None = None,
    hash_weights: bool = True,
) -> ResolvedWeights:
    """Find the weights named by ``source``; see the module docstring for the forms and order.

    Args:
        source: the param value.
        what: human name of the model, for messages ("ptlflow raft_small checkpoint").
        param_key: the params.yaml key that holds ``source`` ("flow.weights"), for messages.
        on_missing: policy when nothing is found and nothing can be downloaded.
        cache_dir: the project's weights cache folder.
        offline: never download (see :func:`is_offline`, which is also consulted).
        extra_cache_dirs: backend cache folders searched for ``source`` and ``extra_names``.
        extra_names: other file names the source is cached under by its backend.
        downloader: fetches backend-specific names when online.
        hash_weights: compute the SHA-256 of what was found (for provenance).
    """
    cache = Path(cache_dir).expanduser()
    if source == RANDOM:
        log.warning("%s: random initialisation requested (%s: random)", what, param_key)
        return ResolvedWeights(what, source, None, True, "requested by params")

    def found(path: Path, reason: str) -> ResolvedWeights:
        log.info("%s: using %s (%s)", what, path, reason)
        return ResolvedWeights(what, source, path, False, reason, sha256_of(path) if hash_weights else None)

    local = Path(source).expanduser()
    if local.exists():
        return found(local, "local path")

    names = [source, cache_name(source), *extra_names]
    for folder in [cache, *extra_cache_dirs]:
        for name in names:
            candidate = Path(folder).expanduser() / name
            if name and candidate.exists():
                return found(candidate, f"cache {folder}")

    expected = cache / cache_name(source)
    failure = "offline (SEMORE_OFFLINE/HF_HUB_OFFLINE or weights.offline)"
    if not is_offline(offline):
        fetch: Downloader | None
        if source.startswith("hf://"):
            fetch = _download_hf
        elif source.startswith(("http://", "https://")):
            fetch = _download_url
        else:
            fetch = downloader
        if fetch is None:
            failure = "not a local path, not in the cache, and not a downloadable source"
        else:
            try:
                cache.mkdir(parents=True, exist_ok=True)
                path = fetch(source, cache)
                return found(Path(path), "downloaded")
            except Exception as exc:  # network, HTTP, hub errors: all mean "not available here"
                failure = f"download failed: {type(exc).__name__}: {exc}"

    searched = ", ".join(str(Path(d).expanduser()) for d in [cache, *extra_cache_dirs])
    if on_missing == "error":
        raise WeightsNotFoundError(
            f"{what}: weights {source!r} ({param_key}) not found: {failure}.\n"
            f"  Fix: put the weights at {expected} (searched: {searched}),\n"
            f"  or set {param_key} to a local path, or set {param_key}: random / weights.on_missing: random "
            f"to run with random initialisation."
        )
    log.warning(
        "!!! %s: weights %r (%s) not found (%s); RANDOM INITIALISATION, recorded in provenance. "
        "Put the weights at %s to use them.",
        what,
        source,
        param_key,
        failure,
        expected,
    )
    return ResolvedWeights(what, source, None, True, f"missing: {failure}")

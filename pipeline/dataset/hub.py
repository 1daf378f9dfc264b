"""Publish a dataset folder to the Hugging Face Hub and get one back (huggingface_hub).

* :func:`push_dataset`: validate, create the dataset repo if needed, upload the
  folder with ``HfApi.upload_folder`` (resumable: a rerun skips committed files and
  deduplicates uploaded data; stale shards of an earlier push are deleted in the
  same commit). Token from ``HF_TOKEN`` (or huggingface_hub's saved login).
* :func:`pull_dataset`: ``snapshot_download`` into a staging folder next to the
  target (kept on failure, so a rerun resumes), validate, rename into place.
* :func:`resolve_dataset`: a local folder, or a Hub id (``user/name`` or
  ``hf://datasets/user/name``) downloaded to the Hub cache: what the pretrain
  stage can take as ``--dataset``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from pipeline.common.errors import UserError
from pipeline.common.io import check_replaceable, replace_into
from pipeline.common.secrets import Redactor, SecretInOutput
from pipeline.dataset.reader import Dataset, open_dataset, validate_dataset

log = logging.getLogger(__name__)

REPO_TYPE = "dataset"
#: What a dataset folder holds, as upload/download patterns.
DATASET_PATTERNS = ["README.md", "stats.json", "train/*.tar", "validation/*.tar"]
SHARD_PATTERNS = ["train/*.tar", "validation/*.tar"]
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


class HubError(UserError, RuntimeError):
    """The Hub could not be used (offline, no token, no access, network); the message says what to do."""


def check_repo_id(repo_id: str) -> str:
    """Accept ``user/name`` (also ``hf://datasets/user/name``); return ``user/name``.

    The name rules are the Hub's own (huggingface_hub's ``validate_repo_id``: letters, digits,
    ``-``, ``_``, ``.``, no ``--`` or ``..``, not starting or ending with ``-`` or ``.``), so
    ``a/..`` or ``../x`` never reach a download path.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    given = repo_id
    repo_id = repo_id.removeprefix("hf://datasets/").removeprefix("datasets/").strip("/")
    example = "expected <user or org>/<dataset name>, e.g. alice/semore-cartpole"
    if not _REPO_ID_RE.match(repo_id):
        raise HubError(f"--repo-id {given!r}: {example}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise HubError(f"--repo-id {given!r}: {exc} ({example})") from None
    return repo_id


def _token() -> str | None:
    for var in TOKEN_ENV:
        if os.environ.get(var):
            return os.environ[var]
    from huggingface_hub import get_token

    return get_token()


def _hub_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a Hub call raises for an unreachable, refusing or offline Hub: huggingface_hub's own
    types (its ``HTTPError`` is whatever HTTP client it is built on: httpx, httpx2, ...), plus OSError."""
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, HTTPError, OfflineModeIsEnabled

    return (HfHubHTTPError, HTTPError, OfflineModeIsEnabled, HFValidationError, OSError)


def _hub_failure(action: str, repo_id: str, exc: BaseException) -> HubError:
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return HubError(
            f"{action} {repo_id}: offline mode is on (HF_HUB_OFFLINE=1); unset it and run again with network access"
        )
    return HubError(
        f"{action} {repo_id} failed ({type(exc).__name__}: {exc}); "
        "check the repo id, your token's access and the network"
    )


def push_dataset(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    api: Any = None,
    secret_envs: tuple[str, ...] = (),
) -> str:
    """Upload a validated dataset folder to the dataset repo ``repo_id``; returns the commit URL (or "").

    Args:
        api: an ``HfApi``-like object (tests pass a fake one); by default ``HfApi(token=$HF_TOKEN)``.
        secret_envs: environment variables whose values must not be published (the annotate API key's);
            the Hub token's (:data:`TOKEN_ENV`) are always checked.

    Raises:
        DatasetError: the folder is incomplete or corrupt (checked before anything is uploaded).
        SecretInOutput: a file to upload holds one of those secrets (checked before anything is uploaded).
        HubError: no token, offline, or the Hub refused.
    """
    folder = Path(folder)
    repo_id = check_repo_id(repo_id)
    check = validate_dataset(folder, decode=False)
    check_no_secrets(folder, (*secret_envs, *TOKEN_ENV))
    if api is None:
        token = _token()
        if not token:
            raise HubError(
                f"push {repo_id}: no Hugging Face token; set HF_TOKEN to a write token "
                "(https://huggingface.co/settings/tokens) or run `hf auth login`"
            )
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    log.info(
        "push: %s -> hf://datasets/%s (%s)",
        folder,
        repo_id,
        ", ".join(f"{s}: {n} samples" for s, n in check.samples.items()),
    )
    try:
        api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type=REPO_TYPE,
            revision=revision,
            commit_message=commit_message or f"semore encode: {sum(check.samples.values())} samples",
            allow_patterns=DATASET_PATTERNS,
            delete_patterns=SHARD_PATTERNS,
        )
    except _hub_errors() as exc:
        raise _hub_failure("push to", repo_id, exc) from exc
    return str(getattr(info, "commit_url", "") or "")


def check_no_secrets(folder: Path, names: tuple[str, ...]) -> None:
    """Refuse (:class:`SecretInOutput`) if a file that push would upload holds the value of one of the
    environment variables ``names``."""
    redactor = Redactor(names)
    if not redactor:
        return
    for path in sorted({p for pattern in DATASET_PATTERNS for p in folder.glob(pattern) if p.is_file()}):
        name = redactor.find_in_file(path)
        if name is not None:
            raise SecretInOutput(
                f"{path}: holds the value of ${name}, a secret; refusing to push the dataset. "
                "Rebuild the annotations and the dataset (semore annotate redacts the key now; clear "
                "annotate.cache_dir entries made before), or rotate the key if it was ever published"
            )


def pull_dataset(repo_id: str, out_dir: str | Path, *, revision: str | None = None, api: Any = None) -> Dataset:
    """Download the dataset repo ``repo_id`` to ``out_dir`` (validated, then renamed into place).

    An interrupted download resumes on the next call (the staging folder ``.<out>.pull`` is kept).
    """
    out_dir = Path(out_dir)
    repo_id = check_repo_id(repo_id)
    check_replaceable(out_dir, "encode")  # before the download: never a user's folder
    staging = out_dir.parent / f".{out_dir.name}.pull"
    staging.parent.mkdir(parents=True, exist_ok=True)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=_token())
    try:
        api.snapshot_download(
            repo_id=repo_id,
            repo_type=REPO_TYPE,
            revision=revision,
            local_dir=str(staging),
            allow_patterns=DATASET_PATTERNS,
        )
    except _hub_errors() as exc:
        raise _hub_failure("pull of", repo_id, exc) from exc
    shutil.rmtree(staging / ".cache", ignore_errors=True)  # huggingface_hub's local-dir bookkeeping
    check = validate_dataset(staging)
    replace_into(staging, out_dir, "encode")  # a pulled dataset stands where the encode stage's would
    log.info(
        "pull: hf://datasets/%s -> %s (%s)",
        repo_id,
        out_dir,
        ", ".join(f"{s}: {n} samples" for s, n in check.samples.items()),
    )
    return open_dataset(out_dir, check_hashes=False)  # checked in full above, before the rename


def resolve_dataset(spec: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """A dataset folder for ``spec``: an existing local folder, or a Hub dataset id downloaded to the Hub cache.

    Offline (``HF_HUB_OFFLINE=1``) a Hub id resolves only if it is already in the cache.

    Raises:
        HubError: neither a folder nor a reachable (or cached) Hub dataset.
    """
    local = Path(spec).expanduser()
    if local.is_dir():
        return local
    text = str(spec)
    if not (text.startswith("hf://") or _REPO_ID_RE.match(text)):
        raise HubError(
            f"dataset {text!r}: no such folder (run the encode stage first: semore encode), "
            "and not a Hub dataset id (user/name or hf://datasets/user/name)"
        )
    repo_id = check_repo_id(text)
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(
            repo_id=repo_id,
            repo_type=REPO_TYPE,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=DATASET_PATTERNS,
        )
    except _hub_errors() as exc:
        raise _hub_failure("download of", repo_id, exc) from exc
    return Path(path)

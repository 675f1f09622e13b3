"""The prepared-data cache: one directory per hash of (data, tokenizer, token-affecting config).

Writes are atomic: rank 0 builds into a temporary directory beside the target and renames it
into place, so a reader sees a complete directory or none. Other ranks never tokenize: they
wait for the directory to appear (or for rank 0's failure marker, or a timeout) and then load it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubetune.data.errors import data_error

log = logging.getLogger("kubetune.data")

# Bump when a code change alters the tokens produced for the same inputs.
PIPELINE_VERSION = 2  # 2: chat_template forwards reasoning traces (field_thinking)
COMPLETE = "COMPLETE"
DEFAULT_TIMEOUT_S = 7200.0


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of what decides the tokens: vocabulary, merges, normalisation, special tokens, template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = {
        "class": type(tokenizer).__name__,
        "backend": backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "added": sorted((i, str(t)) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()),
        "chat_template": getattr(tokenizer, "chat_template", None),
        "eos": tokenizer.eos_token_id,
        "bos": tokenizer.bos_token_id,
    }
    return digest(parts)


def attempt_id() -> str | None:
    """Identity of this torchrun attempt, shared by all its ranks (None outside torchrun)."""
    run = os.environ.get("TORCHELASTIC_RUN_ID")
    return f"{run}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}" if run else None


def build_or_wait(
    root: Path,
    key: str,
    build: Callable[[Path], None],
    *,
    rank: int = 0,
    timeout_s: float | None = None,
    poll_s: float = 0.5,
) -> tuple[Path, bool]:
    """The complete directory root/key, built by `build(tmp_dir)` on rank 0; (path, built_now)."""
    final = root / key
    if (final / COMPLETE).exists():
        return final, False
    failed = root / f"{key}.failed"
    if rank != 0:
        _wait(final, failed, timeout_s, poll_s)
        return final, False
    root.mkdir(parents=True, exist_ok=True)
    failed.unlink(missing_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}.tmp-"))
    try:
        build(staging)
        (staging / COMPLETE).write_text(f"{time.time()}\n")
        staging.chmod(0o755)  # mkdtemp makes 0700; other users' pods may read the cache
        try:
            os.rename(staging, final)
        except OSError:
            if not (final / COMPLETE).exists():  # an incomplete leftover, not a concurrent winner
                raise
            log.info("another process prepared %s first; using its copy", final)
    except BaseException as exc:
        _write_failure(failed, exc)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final, True


def _write_failure(failed: Path, exc: BaseException) -> None:
    fd, tmp = tempfile.mkstemp(dir=failed.parent, prefix=f".{failed.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump({"attempt": attempt_id(), "error": f"{type(exc).__name__}: {exc}"}, handle)
    os.replace(tmp, failed)


def _wait(final: Path, failed: Path, timeout_s: float | None, poll_s: float) -> None:
    if timeout_s is None:
        timeout_s = float(os.environ.get("KUBETUNE_PREPARE_TIMEOUT", DEFAULT_TIMEOUT_S))
    started = time.time()
    log.info("waiting for rank 0 to prepare the datasets into %s", final)
    while not (final / COMPLETE).exists():
        message = _failure_of_this_attempt(failed, started)
        if message:
            raise data_error(
                "dataset_prepared_path",
                f"rank 0 failed to prepare the datasets: {message}",
                "see rank 0's log for the cause, fix it and restart the job",
            )
        if time.time() - started > timeout_s:
            raise data_error(
                "dataset_prepared_path",
                f"waited {timeout_s:g}s for rank 0 to prepare {final}, and it is still not there",
                "check rank 0's log; dataset_prepared_path must be storage every rank sees (or run "
                "`kubetune preprocess` first); KUBETUNE_PREPARE_TIMEOUT sets the wait in seconds",
            )
        time.sleep(poll_s)


def _failure_of_this_attempt(failed: Path, started: float) -> str | None:
    try:
        record = json.loads(failed.read_text())
        mtime = failed.stat().st_mtime
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    # A marker left by an earlier attempt is not this attempt's failure.
    mine = attempt_id()
    if mine is not None and record.get("attempt") != mine:
        return None
    if mine is None and mtime < started - 5:
        return None
    return record.get("error", "unknown error")

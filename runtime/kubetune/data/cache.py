"""The prepared-data cache: one directory per hash of (data, tokenizer, token-affecting config).

Writes are atomic: rank 0 builds into a temporary directory beside the target and renames it
into place, so a reader sees a complete directory or none. Other ranks never tokenize: they
wait for the directory to appear (or for rank 0's failure marker, or a timeout) and then load it.

A builder holds an exclusive flock on `.<key>.lock` for as long as its staging directory
`.<key>.tmp-*` exists (the cache may be shared by several jobs: a second builder of the same key
waits for the first and reuses its result). A staging directory whose key nobody holds was left by a
killed build: rank 0 removes those at its next start, under that key's lock.
"""

from __future__ import annotations

import fcntl
import glob
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
    if type(tokenizer).__name__ == "MistralCommonBackend":
        # mistral-common: the tokenizer file (vocabulary, version, special tokens) and the encoder's
        # code (the turn format lives in the package, not in a template) decide the tokens.
        from importlib.metadata import version

        tokenizer_file = tokenizer.tokenizer.instruct_tokenizer.tokenizer.file_path
        file_hash = hashlib.sha256(Path(tokenizer_file).read_bytes()).hexdigest()
        return digest(
            {"class": "MistralCommonBackend", "file": file_hash, "encoder": version("mistral-common")}
        )
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
    remove_abandoned_staging(root)
    lock = _lock(root, key, wait=False)
    if lock is None:
        log.info("another process is preparing %s; waiting for it to finish", final)
        lock = _lock(root, key, wait=True)
        assert lock is not None  # waiting returns once the lock is ours
    try:
        if (final / COMPLETE).exists():  # the process we waited for built it
            return final, False
        return _build(root, key, build), True
    finally:
        _unlock(root, key, lock)


def _build(root: Path, key: str, build: Callable[[Path], None]) -> Path:
    final, failed = root / key, root / f"{key}.failed"
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
    return final


def remove_abandoned_staging(root: Path) -> None:
    """Delete staging directories of builds that were killed (SIGKILL, OOM, a lost node).

    Each is removed only while holding its key's lock, which a live builder holds from before its
    staging directory exists until after it is gone; a key whose lock is taken is being built now."""
    for staging in sorted(root.glob(".*.tmp-*")):
        key = staging.name[1:].rpartition(".tmp-")[0]
        if not staging.is_dir() or not key:
            continue
        lock = _lock(root, key, wait=False)
        if lock is None:
            continue
        try:
            for leftover in root.glob(f".{glob.escape(key)}.tmp-*"):
                log.warning("removing %s, left by a data preparation that was killed", leftover)
                shutil.rmtree(leftover, ignore_errors=True)
        finally:
            _unlock(root, key, lock)


def _lock(root: Path, key: str, *, wait: bool) -> int | None:
    """A descriptor holding the exclusive lock of `key`, or None (wait=False and another holds it).

    flock is released by the kernel when its holder dies, also on NFS (emulated with POSIX locks)."""
    path = root / f".{key}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # read-write: NFS needs it for a write lock
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            held = os.fstat(fd)
            current = os.stat(path)
            if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the previous holder removed this file as it let go: lock the path's new file


def _unlock(root: Path, key: str, fd: int) -> None:
    # Removed while still held, so that nobody locks a file that has left the directory (see _lock).
    (root / f".{key}.lock").unlink(missing_ok=True)
    os.close(fd)


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

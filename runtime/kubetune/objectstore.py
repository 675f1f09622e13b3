"""Object storage (`s3://`, `gs://`, `az://`) through fsspec: fetch a source once, upload a result.

Pure functions, no training imports, so that whatever fetches the job's sources (the training data
loader today, a per-job fetch step) calls the same code and lands on the same cache entry:

    fetch_source(uri, cache_root)  -> local path of the copy (a file, or a directory for a prefix)
    upload_files(local_dir, names, uri) -> where each file went
    check_writable(uri)            -> raises before hours of training if the result could not be uploaded

A copy lives in `<cache_root>/<key>/data/...` where the key hashes the URI and the objects' ETags (or
sizes and modification times where a store gives no ETag), so a changed object is fetched again and an
unchanged one never is. Directories appear by an atomic rename: a half-written copy is never seen.
Credentials come only from the process environment, read by obstore itself
(obstore's: AWS_* for S3, including AWS_ENDPOINT_URL; GOOGLE_* for GCS; AZURE_STORAGE_* for Azure);
nothing here prints them, and errors name the URI, never a key. (Not s3fs: botocore requires
python-dateutil<3, the kubernetes client of the operator >=3, and both live in one dev environment.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.config.redaction import without_credentials
from kubetune.config.sources import CREDENTIALS_HINT, OBJECT_STORE_SCHEMES, uri_scheme

log = logging.getLogger(__name__)

SOURCE_CACHE_ENV = "KUBETUNE_SOURCE_CACHE"
WRITE_PROBE = ".kubetune-write-check"


@dataclass
class ObjectStoreError(Exception):
    """A URI could not be read or written: what happened, and what to do about it."""

    uri: str
    message: str
    fix: str
    permanent: bool = True  # False: the store could not be reached (retrying may help)

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.fix})"


def source_cache_dir() -> Path:
    """Where fetched sources live: KUBETUNE_SOURCE_CACHE, else the job's cache volume
    (KUBETUNE_CACHE_DIR, set by the operator when spec.cache is given), else ~/.cache/kubetune."""
    if os.environ.get(SOURCE_CACHE_ENV):
        return Path(os.environ[SOURCE_CACHE_ENV])
    root = os.environ.get("KUBETUNE_CACHE_DIR") or Path.home() / ".cache" / "kubetune"
    return Path(root) / "sources"


def filesystem(uri: str):
    """(fsspec filesystem, `bucket/key` path) for an object-store URI; ObjectStoreError without obstore."""
    scheme = uri_scheme(uri)
    if scheme not in OBJECT_STORE_SCHEMES:
        raise ObjectStoreError(uri, f"{uri} is not an object-store URI", "use s3://, gs:// or az://")
    try:
        from obstore.fsspec import FsspecStore
    except ImportError as err:
        raise ObjectStoreError(
            uri,
            f"reading {scheme}:// needs the obstore package, which is not installed ({err})",
            "install kubetune with the cloud extra: pip install 'kubetune[cloud]'",
        ) from None
    # A new instance each call: obstore builds each bucket's client from the environment when first
    # used, and listings must be fresh (an object may have changed since the last call).
    # skip_instance_cache is fsspec's (its instance-cache metaclass takes it), not in obstore's stubs.
    fs = FsspecStore(scheme, skip_instance_cache=True)  # type: ignore[call-overload]
    return fs, uri.split("://", 1)[1].strip("/")


def describe_objects(uri: str) -> tuple[list[dict[str, Any]], bool]:
    """The objects `uri` names, sorted ([{"name": path relative to the URI, "size", "tag"}]), and whether
    it names one object (its name is then its base name) rather than a prefix (everything under it)."""
    fs, path = filesystem(uri)
    with _translated(uri, "read"):
        info = fs.info(path)
        if info.get("type") == "file":
            return [_describe(path.rsplit("/", 1)[-1], info)], True
        found = fs.find(path, detail=True)
    objects = [
        _describe(name[len(path) :].lstrip("/"), entry)
        for name, entry in found.items()
        if entry.get("type") == "file" and not name.endswith("/")
    ]
    if not objects:
        raise ObjectStoreError(uri, f"{_shown(uri)} holds no objects", "check the bucket and the prefix")
    return sorted(objects, key=lambda entry: entry["name"]), False


def _describe(name: str, info: dict[str, Any]) -> dict[str, Any]:
    tag = info.get("e_tag")
    if not isinstance(tag, str) or not tag:
        modified = info.get("last_modified") or ""
        tag = f"{info.get('size')}@{modified}"
    return {"name": name, "size": int(info.get("size") or 0), "tag": tag.strip('"')}


def source_key(uri: str, objects: list[dict[str, Any]]) -> str:
    """The cache key of a source: its URI (without credentials) and the identity of every object."""
    text = json.dumps({"uri": without_credentials(uri), "objects": objects}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def fetch_source(uri: str, cache_root: str | os.PathLike | None = None) -> Path:
    """The local copy of `uri` (an object: its file; a prefix: the directory of its objects),
    downloading only when no copy of these exact objects is in `cache_root` yet. Processes sharing the
    cache (the ranks of a pod, the fetch steps of a job's pods) download under one lock per copy: the
    first downloads, the others wait and find its copy."""
    from filelock import FileLock

    root = Path(cache_root) if cache_root is not None else source_cache_dir()
    objects, single = describe_objects(uri)
    entry = root / source_key(uri, objects)
    local = entry / "data" / objects[0]["name"] if single else entry / "data"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry) + ".lock"):
        if (entry / "source.json").is_file():
            log.info("%s: using the copy in %s", _shown(uri), entry)
            return local
        _download(uri, objects, single, root, entry)
    return local


def _download(uri: str, objects: list[dict[str, Any]], single: bool, root: Path, entry: Path) -> None:
    fs, path = filesystem(uri)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{entry.name}.staging-"))
    started = time.monotonic()
    try:
        for obj in objects:
            target = staging / "data" / obj["name"]
            target.parent.mkdir(parents=True, exist_ok=True)
            remote = path if single else f"{path.rstrip('/')}/{obj['name']}"
            with _translated(uri, "read"):
                fs.get_file(remote, str(target))
        record = {"uri": without_credentials(uri), "objects": objects, "fetched_at": time.time()}
        (staging / "source.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        try:
            os.rename(staging, entry)
        except OSError:  # another process put the same copy in place first: keep that one
            if not (entry / "source.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    total = sum(obj["size"] for obj in objects)
    log.info(
        "%s: fetched %d object(s), %d bytes in %.1fs into %s",
        _shown(uri),
        len(objects),
        total,
        time.monotonic() - started,
        entry,
    )


def check_writable(uri: str) -> None:
    """Write and delete one small object under `uri`: fails now, naming the fix, rather than after training."""
    fs, path = filesystem(uri)
    probe = f"{path.rstrip('/')}/{WRITE_PROBE}"
    with _translated(uri, "write"):
        fs.pipe_file(probe, b"kubetune checks that it may write the result here\n")
        fs.rm_file(probe)


def upload_files(local_dir: Path, names: list[str], uri: str) -> dict[str, Any]:
    """Upload `local_dir/<name>` to `<uri>/<name>` for each name; returns what went where."""
    fs, path = filesystem(uri)
    base = uri.rstrip("/")
    total = 0
    started = time.monotonic()
    for name in names:
        source = local_dir / name
        with _translated(uri, "write"):
            fs.put_file(str(source), f"{path.rstrip('/')}/{name}")
        total += source.stat().st_size
    seconds = time.monotonic() - started
    log.info("uploaded %d file(s), %d bytes to %s in %.1fs", len(names), total, _shown(base), seconds)
    return {"uri": without_credentials(base), "files": sorted(names), "bytes": total}


class _translated:
    """Turns obstore's errors into an ObjectStoreError naming the URI and the fix."""

    def __init__(self, uri: str, action: str):
        self.uri, self.action = uri, action

    def __enter__(self):
        return self

    def __exit__(self, kind, error, _traceback):
        if error is None or isinstance(error, ObjectStoreError):
            return False
        shown = _shown(self.uri)
        family = OBJECT_STORE_SCHEMES.get(uri_scheme(self.uri) or "", "")
        credentials = CREDENTIALS_HINT.get(family, "the store's credentials")
        name = type(error).__name__
        if isinstance(error, FileNotFoundError) or name == "NotFoundError" or "404 Not Found" in str(error):
            raise ObjectStoreError(
                self.uri,
                f"{shown}: no such object, prefix or bucket",
                "check the bucket and key (object names are case-sensitive); for a prefix end the URI with /",
            ) from None
        if isinstance(error, PermissionError) or name in ("PermissionDeniedError", "UnauthenticatedError"):
            raise ObjectStoreError(
                self.uri,
                f"{shown}: access denied while trying to {self.action} ({_reason(error)})",
                f"give the job credentials that may {self.action} it, as environment variables: {credentials}; "
                "on Kubernetes from a Secret through spec.envFrom",
            ) from None
        if isinstance(error, OSError | ValueError | TimeoutError) or type(error).__module__.startswith(
            "obstore"
        ):
            raise ObjectStoreError(
                self.uri,
                f"{shown}: cannot {self.action} it: {_reason(error)}",
                "check the endpoint (AWS_ENDPOINT_URL for an S3-compatible store; AWS_ALLOW_HTTP=true for one "
                "without TLS) and that it is reachable",
                permanent=False,
            ) from None
        return False


def _reason(error: BaseException) -> str:
    """The error's class and first line, without anything that looks like a credential."""
    text = str(error).splitlines()[0] if str(error) else ""
    for variable in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_ACCOUNT_KEY"):
        secret = os.environ.get(variable)
        if secret and secret in text:
            text = text.replace(secret, "***")
    return f"{type(error).__name__}: {text}"[:300]


def _shown(uri: str) -> str:
    return without_credentials(uri)

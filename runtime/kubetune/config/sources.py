"""Remote sources in a config (no network, no torch): which keys name them, how each is fetched, and the
object-store URIs (`datasets[].path`, `output_uri`) checked statically.

The operator imports this to decide whether a job needs a fetch step; `kubetune fetch` uses it to
know what to download. A value is remote when it is a URI of a registered scheme (`s3://...`; the
object-store fetchers register theirs) or a hub id (`org/name` or `name`) that is not an existing
local path. Local paths and volume paths stay as they are.

This is the one home for the object-store scheme table. The runtime (kubetune.objectstore) reads and
writes these URIs through fsspec with obstore's filesystem (the `cloud` extra); credentials come from the
process environment only (a Kubernetes Secret through `envFrom`), never from the config or the URI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic_core import PydanticCustomError

HUB = "hub"
SourceKind = Literal["model", "dataset"]
# org/name or name, as the hub spells repository ids (letters, digits, -, _, .; no leading . or -)
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
URI = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*)://")
# Schemes that object-store fetchers handle (kubetune.sources.fetch.FETCHERS keys besides "hub").
# A data file named by a relative path (kubetune.data.loading.FILE_TYPES): local, never a hub id.
DATA_FILE_SUFFIXES = frozenset({".jsonl", ".json", ".parquet", ".csv", ".arrow", ".txt"})


@dataclass(frozen=True)
class Source:
    """One remote source a run reads: the config key naming it, what it is, where, at which revision."""

    key: str  # config key path, e.g. "base_model" or "datasets[0].path"
    kind: SourceKind
    uri: str  # a hub id, or a URI such as s3://bucket/train.jsonl
    revision: str | None = None  # hub revision (branch, tag or commit); None: the default branch
    scheme: str = HUB
    # fnmatch patterns of repository files not to download (base_model_ignore_patterns; hub only)
    ignore_patterns: tuple[str, ...] = ()

    def describe(self) -> str:
        at = f" at revision {self.revision}" if self.revision else ""
        return f"{self.key} {self.uri!r}{at}"


def scheme_of(value: str, source_dir: Path | None = None, *, check_local: bool = True) -> str | None:
    """The fetcher scheme of a config value: a URI's scheme, "hub" for a hub id, None for a local path
    (absolute, ./ ../ ~, a data file's suffix, or, with `check_local`, an existing file or directory
    relative to `source_dir`). The operator, which cannot see the pods' volumes, passes
    check_local=False: a relative directory that looks like a hub id then costs a fetch step that
    finds it local and downloads nothing."""
    match = URI.match(value)
    if match:
        return match["scheme"]
    if (
        value.startswith(("/", ".", "~"))
        or not HUB_ID.match(value)
        or Path(value).suffix in DATA_FILE_SUFFIXES
    ):
        return None
    if check_local and ((source_dir if source_dir is not None else Path.cwd()) / value).exists():
        return None
    return HUB


def remote_sources(config: Any, *, check_local: bool = True) -> list[Source]:
    """Every remote source of a config (a TrainConfig, or its mapping as the operator holds it), in
    config order, each once (the first key naming it wins)."""
    found: list[Source] = []
    seen: set[tuple[str, str, str | None]] = set()
    source_dir = _get(config, "source_dir")

    def add(key: str, kind: SourceKind, value: Any, revision: Any, ignore: tuple[str, ...] = ()) -> None:
        if not value or not isinstance(value, str):
            return
        scheme = scheme_of(value, source_dir, check_local=check_local)
        if scheme is None:
            return
        revision = revision if scheme == HUB and isinstance(revision, str) else None
        if (kind, value, revision) not in seen:
            seen.add((kind, value, revision))
            found.append(Source(key, kind, value, revision, scheme, ignore if scheme == HUB else ()))

    base_model = _get(config, "base_model")
    pin = _get(config, "revision_of_model")
    # First: base_model's repository is fetched once, with its patterns, whichever keys also name it.
    ignore = _get(config, "base_model_ignore_patterns") or ()  # one string in a raw mapping is one pattern
    add("base_model", "model", base_model, pin, (ignore,) if isinstance(ignore, str) else tuple(ignore))
    for key in ("base_model_config", "tokenizer_config"):
        value = _get(config, key)
        # revision_of_model pins base_model's repository only (TrainConfig.revision_for)
        add(key, "model", value, pin if value == base_model else None)
    for section in ("datasets", "test_datasets", "pretraining_dataset"):
        for index, entry in enumerate(_get(config, section) or []):
            add(f"{section}[{index}].path", "dataset", _get(entry, "path"), _get(entry, "revision"))
    return found


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


# -- object-store URIs ----------------------------------------------------------------------------

# URI scheme -> the store family (obstore, through its fsspec filesystem, implements all three; s3fs
# cannot be used: botocore requires python-dateutil<3, the kubernetes client >=3). Axolotl's spellings.
OBJECT_STORE_SCHEMES: dict[str, str] = {
    "s3": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
}
# What each store reads from the environment (docs/kubernetes.md, "Data in object storage").
CREDENTIALS_HINT: dict[str, str] = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for an S3-compatible store "
    "other than AWS)",
    "gcs": "GOOGLE_APPLICATION_CREDENTIALS (the path of a service-account key file)",
    "azure": "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY",
}
SCHEMES_TEXT = ", ".join(f"{scheme}://" for scheme in OBJECT_STORE_SCHEMES)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")


def uri_scheme(value: str) -> str | None:
    """The lower-cased scheme of `value` when it is written `scheme://...`, else None (a path or hub id)."""
    match = _SCHEME.match(value)
    return match.group(1).lower() if match else None


def is_object_store_uri(value: str) -> bool:
    return uri_scheme(value) in OBJECT_STORE_SCHEMES


def bucket_and_key(value: str) -> tuple[str, str]:
    """(`bucket`, `key/inside/it`) of an object-store URI (the key may be empty: the whole bucket)."""
    match = _SCHEME.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a scheme://bucket/key URI")
    bucket, _, key = match.group(2).partition("/")
    return bucket, key.strip("/")


def check_object_store_uri(value: object, *, what: str, required: bool) -> object:
    """A pydantic `before` validator's body: refuse an unknown scheme, a URI without a bucket, and
    credentials written into the URI. With `required`, a value without a scheme is refused too."""
    if not isinstance(value, str):
        return value
    scheme = uri_scheme(value)
    if scheme is None:
        if required:
            raise PydanticCustomError(
                "object_store_uri",
                "{what} must be an object-store URI ({schemes})",
                {"what": what, "schemes": SCHEMES_TEXT, "fix": "write e.g. s3://bucket/prefix"},
            )
        return value
    if scheme not in OBJECT_STORE_SCHEMES:
        raise PydanticCustomError(
            "object_store_scheme",
            "{what} uses the scheme {scheme}://, which kubetune does not read",
            {
                "what": what,
                "scheme": scheme,
                "fix": f"use one of {SCHEMES_TEXT} (object storage), a hub id, or a local path "
                "(copy the data onto a volume first)",
            },
        )
    bucket, _ = bucket_and_key(value)
    if "@" in bucket or ":" in bucket:
        raise PydanticCustomError(
            "object_store_credentials",
            "{what} carries credentials or a port in its bucket part; credentials come from the environment",
            {
                "what": what,
                "fix": f"write {scheme}://bucket/key and pass the credentials as environment variables "
                f"({CREDENTIALS_HINT[OBJECT_STORE_SCHEMES[scheme]]}), on Kubernetes from a Secret",
            },
        )
    if not bucket:
        raise PydanticCustomError(
            "object_store_bucket",
            "{what} names no bucket",
            {"what": what, "fix": f"write {scheme}://bucket/key"},
        )
    return value

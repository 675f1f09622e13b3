"""Which keys of a config name remote sources, and how each is fetched (no network, no torch).

The operator imports this to decide whether a job needs a fetch step; `kubetune fetch` uses it to
know what to download. A value is remote when it is a URI of a registered scheme (`s3://...`; the
object-store fetchers register theirs) or a hub id (`org/name` or `name`) that is not an existing
local path. Local paths and volume paths stay as they are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

HUB = "hub"
# org/name or name, as the hub spells repository ids (letters, digits, -, _, .; no leading . or -)
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
URI = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*)://")
# Schemes that object-store fetchers handle (kubetune.sources.fetch.FETCHERS keys besides "hub").
# A data file named by a relative path (kubetune.data.loading.FILE_TYPES): local, never a hub id.
DATA_FILE_SUFFIXES = frozenset({".jsonl", ".json", ".parquet", ".csv", ".arrow", ".txt"})
OBJECT_STORE_SCHEMES = frozenset({"s3", "gs", "gcs", "az", "abfs"})


@dataclass(frozen=True)
class Source:
    """One remote source a run reads: the config key naming it, what it is, where, at which revision."""

    key: str  # config key path, e.g. "base_model" or "datasets[0].path"
    kind: Literal["model", "dataset"]
    uri: str  # a hub id, or a URI such as s3://bucket/train.jsonl
    revision: str | None = None  # hub revision (branch, tag or commit); None: the default branch
    scheme: str = HUB

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

    def add(key: str, kind: str, value: Any, revision: Any) -> None:
        if not value or not isinstance(value, str):
            return
        scheme = scheme_of(value, source_dir, check_local=check_local)
        if scheme is None:
            return
        revision = revision if scheme == HUB and isinstance(revision, str) else None
        if (kind, value, revision) not in seen:
            seen.add((kind, value, revision))
            found.append(Source(key, kind, value, revision, scheme))

    base_model = _get(config, "base_model")
    pin = _get(config, "revision_of_model")
    add("base_model", "model", base_model, pin)
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

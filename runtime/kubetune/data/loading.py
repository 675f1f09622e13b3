"""Rows from a `datasets[i]` entry: local files, saved datasets directories, object-store URIs, or hub ids.

An object-store URI (`s3://`, `gs://`, `az://`) is fetched once into the source cache
(kubetune.objectstore) and then read like the local file or directory it became.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.config.sources import is_object_store_uri
from kubetune.data.errors import DataError, data_error
from kubetune.objectstore import ObjectStoreError, describe_objects, fetch_source

if TYPE_CHECKING:
    from kubetune.config.data import PretrainingDatasetConfig
    from kubetune.config.datasets import DatasetConfig

    # The keys load_rows reads are the same in both kinds of entry.
    DataSource = DatasetConfig | PretrainingDatasetConfig

# file suffix -> datasets builder
FILE_TYPES = {
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".arrow": "arrow",
    ".txt": "text",
}
HUB_FIX = "for a local file give its path; hub datasets need network access and the right name/split"


def local_path(path: str, source_dir: str | Path | None) -> Path | None:
    """The local file or directory `path` names, or None for a hub id.

    Relative paths resolve against the config's directory (the working directory for a config
    built in memory), as every path in a config does. A path that looks local (absolute, ./ or ~,
    a data-file suffix) but does not exist is an error rather than a confusing hub lookup.
    """
    given = Path(path).expanduser()
    candidate = given if given.is_absolute() else Path(source_dir or Path.cwd()) / given
    if candidate.exists():
        return candidate.resolve()
    if given.is_absolute() or path.startswith((".", "~")) or given.suffix in FILE_TYPES:
        raise FileNotFoundError(candidate)
    return None


def load_rows(
    entry: DataSource, where: str, source_dir: str | Path | None = None, *, streaming: bool = False
) -> Any:
    """The rows of one dataset entry as a `datasets.Dataset` (with `streaming`, an IterableDataset read
    lazily: a hub corpus is never downloaded whole); DataError naming `where` otherwise."""
    import datasets
    import pyarrow as pa

    path, ds_type, split, name, data_files = (
        entry.path,
        entry.ds_type,
        entry.split,
        entry.name,
        entry.data_files,
    )
    try:
        remote = is_object_store_uri(path)
        local = fetch_source(path) if remote else local_path(path, source_dir)
    except ObjectStoreError as err:
        raise data_error(f"{where}.path", err.message, err.fix) from None
    except FileNotFoundError as missing:
        base = f"the config's directory ({source_dir})" if source_dir else "the working directory"
        raise data_error(
            f"{where}.path",
            f"no such file or directory: {missing}",
            f"fix the path; relative paths are resolved against {base}",
        ) from None
    try:
        if local is None:
            revision = entry.revision
            fetched = fetched_snapshot(path, revision, where)
            rows = datasets.load_dataset(
                fetched or path,
                name=name,
                split=split,
                data_files=data_files,
                revision=None if fetched else revision,
                streaming=streaming,
            )
        elif local.is_dir() and _is_saved_dataset(local):
            rows = datasets.load_from_disk(str(local))
            if isinstance(rows, datasets.DatasetDict):
                if split not in rows:
                    raise data_error(
                        f"{where}.split",
                        f"{local} has no split {split!r}",
                        f"use one of: {', '.join(rows)}",
                    )
                rows = rows[split]
            if streaming:
                rows = rows.to_iterable_dataset()
        else:
            files = _data_files(local, data_files)
            builder = FILE_TYPES.get(f".{ds_type}", ds_type) or _builder_for(files, where)
            if builder not in FILE_TYPES.values():
                raise data_error(
                    f"{where}.ds_type",
                    f"unknown ds_type {builder!r}",
                    f"use one of: {', '.join(sorted(set(FILE_TYPES.values())))}",
                )
            if not isinstance(files, Mapping) and not split.startswith("train"):
                raise data_error(
                    f"{where}.split",
                    f"local files without a split mapping only have the split 'train', not {split!r}",
                    "drop split (or use slicing such as train[:90%]), or give data_files as {split: files}",
                )
            rows = datasets.load_dataset(builder, data_files=files, split=split, streaming=streaming)
    except DataError:
        raise
    except (datasets.exceptions.DatasetNotFoundError, datasets.exceptions.DataFilesNotFoundError) as exc:
        raise data_error(f"{where}.path", f"dataset {path!r} not found: {exc}", HUB_FIX) from exc
    except (pa.ArrowInvalid, datasets.exceptions.DatasetGenerationError, ValueError, OSError) as exc:
        if local is None:
            raise data_error(
                f"{where}.path", f"cannot load hub dataset {path!r}: {type(exc).__name__}: {exc}", HUB_FIX
            ) from exc
        shown = f"{path} (fetched into {local})" if remote else str(local)
        raise data_error(
            f"{where}.path",
            f"cannot read {shown}: {type(exc).__name__}: {exc}",
            "check the file's format (one JSON object per line for .jsonl), or set ds_type "
            "(json, parquet, csv, arrow, text)",
        ) from exc
    return rows


def fetched_snapshot(repo_id: str, revision: str | None, where: str) -> str | None:
    """With HF_HUB_OFFLINE=1 (a job whose fetch step filled the cache, or after `kubetune fetch`), the
    local snapshot of hub dataset `repo_id` at `revision` in huggingface_hub's cache, which
    datasets then reads as a directory of data files (its README's configs included); None online.

    datasets' own offline mode only finds datasets it has already prepared once, not raw hub files."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if not constants.HF_HUB_OFFLINE:
        return None
    try:
        return snapshot_download(repo_id, repo_type="dataset", revision=revision, local_files_only=True)
    except LocalEntryNotFoundError:
        at = f" at revision {revision}" if revision else ""
        raise data_error(
            f"{where}.path",
            f"hub dataset {repo_id!r}{at} is not in the cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set",
            "run `kubetune fetch CONFIG` with network access first (a FineTuneJob's fetch step does), "
            "or unset HF_HUB_OFFLINE",
        ) from None


def data_fingerprint(entry: DataSource, source_dir: str | Path | None) -> dict[str, Any]:
    """What identifies an entry's data without loading it: local file contents, the objects' ETags
    for an object-store URI (a listing, no download), or the hub id."""
    import hashlib

    path = entry.path
    if is_object_store_uri(path):
        try:
            objects, _ = describe_objects(path)
        except ObjectStoreError:
            return {"unreadable": path}  # load_rows reports it properly
        return {
            "remote": path,
            "objects": objects,
            **{"name": entry.name, "split": entry.split, "data_files": entry.data_files},
        }
    try:
        local = local_path(path, source_dir)
    except FileNotFoundError:
        return {"missing": path}  # load_rows reports it properly
    if local is None:
        return {
            "hub": {
                "path": path,
                "name": entry.name,
                "split": entry.split,
                "data_files": entry.data_files,
                "revision": entry.revision,
            }
        }
    files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local]
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(local) if local.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return {"local": digest.hexdigest()}


def _is_saved_dataset(directory: Path) -> bool:
    return (directory / "dataset_dict.json").exists() or (directory / "state.json").exists()


def _data_files(local: Path, data_files: Any) -> Any:
    """The files to load: the file itself, or `data_files` (or every data file) inside a directory."""
    if local.is_file():
        return str(local)
    if data_files:
        if isinstance(data_files, Mapping):
            return {split: _under(local, files) for split, files in data_files.items()}
        return _under(local, data_files)
    files = sorted(str(p) for p in local.rglob("*") if p.suffix in FILE_TYPES and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"{local} holds no data files ({', '.join(FILE_TYPES)})")
    return files


def _under(directory: Path, files: Any) -> list[str]:
    return [str(directory / f) for f in ([files] if isinstance(files, str) else files)]


def _builder_for(files: Any, where: str) -> str:
    flat = [f for group in files.values() for f in group] if isinstance(files, Mapping) else files
    flat = [flat] if isinstance(flat, str) else flat
    suffixes = {Path(f).suffix for f in flat}
    builders = {FILE_TYPES.get(suffix) for suffix in suffixes}
    builder = builders.pop() if len(builders) == 1 else None
    if builder is None:
        raise data_error(
            f"{where}.ds_type",
            f"cannot tell the file type from the suffixes {sorted(suffixes)}",
            "set ds_type: json, parquet, csv, arrow or text",
        )
    return builder

"""The fetch step's fetcher for object-store sources (s3://, gs://, az://): kubetune.objectstore's
download into the job's source cache (under a lock per source), so the pods of a job that share the cache
volume download each object once; the run's loader then finds that copy (same URI, same ETags) and
downloads nothing."""

from __future__ import annotations

from pathlib import Path

from kubetune.config.sources import OBJECT_STORE_SCHEMES, Source
from kubetune.sources.fetch import Fetched, FetchError, FetchProgress, Reporter, register_fetcher


def fetch_object_store(source: Source, progress: FetchProgress, report: Reporter) -> Fetched:
    from kubetune import objectstore

    try:
        objects, _ = objectstore.describe_objects(source.uri)
        total = sum(int(obj["size"]) for obj in objects)
        progress.files_total, progress.bytes_total = len(objects), progress.bytes_total + total
        report(progress)
        root = objectstore.source_cache_dir()
        root.mkdir(parents=True, exist_ok=True)
        entry = root / objectstore.source_key(source.uri, objects)
        cached = (entry / "source.json").is_file()  # (fetch_source itself downloads under a lock)
        local = objectstore.fetch_source(source.uri, root)
    except objectstore.ObjectStoreError as err:
        raise FetchError(source, f"{err.message} (fix: {err.fix})", permanent=err.permanent) from None
    progress.files_done, progress.bytes_done = len(objects), progress.bytes_done + total
    report(progress)
    return Fetched(
        source=source,
        revision=None,
        files=len(objects),
        bytes=total,
        downloaded_files=0 if cached else len(objects),
        local_path=str(Path(local)),
    )


for _scheme in OBJECT_STORE_SCHEMES:
    register_fetcher(_scheme, fetch_object_store)

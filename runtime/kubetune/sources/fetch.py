"""Fetch a run's remote sources once into the cache, keyed by source and resolved revision.

Each scheme has a fetcher (`FETCHERS`): "hub" here (the real `huggingface_hub` client, any
hub-compatible endpoint through `HF_ENDPOINT`); object-store schemes register theirs with
`register_fetcher`. A fetcher downloads under a lock per source in the cache, so the pods of a job
that share the cache volume (and later jobs that share it) download each file once: the first holds
the lock and downloads, the others wait and find the completion marker. Training then runs with
`HF_HUB_OFFLINE=1` against the cached copy.

Hub layout: the files land in huggingface_hub's own cache (`$HF_HOME/hub`, where transformers and
datasets look in offline mode), downloaded at the resolved commit; `refs/<revision>` is written so
an offline load by branch or tag name finds that commit. The marker is
`$HF_HOME/hub/.kubetune-fetched/<type>s--<org>--<name>--<commit>.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kubetune.config.sources import HUB, Source, remote_sources

log = logging.getLogger("kubetune.fetch")

COMMIT = re.compile(r"^[0-9a-f]{40}$")
# Weight formats transformers does not load for PyTorch; a repository holding safetensors also
# skips its pickled copies (the same weights twice).
FOREIGN_WEIGHTS = re.compile(
    r"(\.(h5|msgpack|onnx|onnx_data|ot|gguf|tflite|mlmodel|mlpackage)$|^(onnx|openvino|coreml)/)"
)
PICKLED_WEIGHTS = re.compile(r"\.(bin|pt|pth|ckpt)$")
# What transformers loads a model from: a top-level safetensors or pickled weight file (or shard).
MODEL_WEIGHTS = re.compile(r"^[^/]+\.(safetensors|bin|pt|pth|ckpt)$")


class FetchError(Exception):
    """A source could not be fetched. `permanent`: retrying cannot help (not found, no access, no such
    revision): the job fails at once instead of burning GPU time on restarts."""

    def __init__(self, source: Source, reason: str, *, permanent: bool):
        super().__init__(f"{source.describe()}: {reason}")
        self.source = source
        self.reason = reason
        self.permanent = permanent


@dataclass
class Fetched:
    source: Source
    revision: str | None  # the resolved commit (hub), None where the scheme has none
    files: int
    bytes: int
    downloaded_files: int  # 0 when the cache already held it all
    local_path: str


@dataclass
class FetchProgress:
    """What the fetch step reports (the job's `fetch.json` progress key; `kubectl get ftj` shows it)."""

    sources: int
    source_index: int = 0  # 1-based index of the source being fetched
    current: str = ""
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0  # over all sources so far
    bytes_total: int = 0  # known totals of the sources listed so far
    done: bool = False
    error: str | None = None
    started: float = field(default_factory=time.time)

    def status(self) -> dict:
        out = {
            "sources": self.sources,
            "source": self.source_index,
            "current": self.current,
            "filesDone": self.files_done,
            "filesTotal": self.files_total,
            "bytesDone": self.bytes_done,
            "bytesTotal": self.bytes_total,
            "done": self.done,
        }
        if self.error:
            out["error"] = self.error
        return out


Reporter = Callable[[FetchProgress], None]
Fetcher = Callable[[Source, FetchProgress, Reporter], Fetched]
FETCHERS: dict[str, Fetcher] = {}


def register_fetcher(scheme: str, fetcher: Fetcher) -> None:
    """Plug in a fetcher for a URI scheme (the object stores register s3, gs, az)."""
    FETCHERS[scheme] = fetcher


def fetch_sources(cfg, report: Reporter = lambda progress: None) -> list[Fetched]:
    """Fetches every remote source of `cfg` (see kubetune.config.sources) in config order.

    Raises FetchError for the first source that fails (the rest are not tried: the run cannot start).
    A source of a scheme with no fetcher registered is left to the run's own loader.
    """
    sources = []
    for source in remote_sources(cfg):
        if source.scheme in FETCHERS:
            sources.append(source)
        else:  # its loader reads it at run time, as without a fetch step
            log.info(
                "%s: no fetcher for %s:// sources, the run reads it itself", source.describe(), source.scheme
            )
    progress = FetchProgress(sources=len(sources))
    results = []
    for index, source in enumerate(sources, start=1):
        progress.source_index, progress.current = index, source.describe()
        progress.files_done = progress.files_total = 0
        fetcher = FETCHERS[source.scheme]
        report(progress)
        results.append(fetcher(source, progress, report))
    progress.done = True
    report(progress)
    return results


# --- the hub --------------------------------------------------------------------------------------


def wanted_files(kind: str, files: list[str]) -> list[str]:
    """The files of a repository a run reads: for models, no foreign weight formats, and no pickled
    weights when safetensors are there; datasets whole."""
    if kind != "model":
        return list(files)
    kept = [f for f in files if not FOREIGN_WEIGHTS.search(f)]
    if any(f.endswith(".safetensors") for f in kept):
        kept = [f for f in kept if not PICKLED_WEIGHTS.search(f) or f.endswith("training_args.bin")]
    return kept


def not_ignored(source: Source, files: list[str]) -> list[str]:
    """`files` less those matching the source's ignore patterns (base_model_ignore_patterns), with
    huggingface_hub's own matching (snapshot_download's `ignore_patterns`). A FetchError when they leave
    out what the run loads: config.json, or every weight file."""
    if not source.ignore_patterns:
        return files
    from huggingface_hub.utils import filter_repo_objects

    kept = list(filter_repo_objects(files, ignore_patterns=list(source.ignore_patterns)))
    lost = []
    if "config.json" in files and "config.json" not in kept:
        lost.append("config.json")
    weights = [f for f in files if MODEL_WEIGHTS.match(f) and f != "training_args.bin"]
    if weights and not set(weights) & set(kept):
        lost.append(f"every weight file ({', '.join(weights[:4])}{', ...' if len(weights) > 4 else ''})")
    if lost:
        raise FetchError(
            source,
            f"base_model_ignore_patterns {list(source.ignore_patterns)} leave out {' and '.join(lost)}, which "
            "the run loads (fix: narrow or remove those patterns)",
            permanent=True,
        )
    ignored = sorted(set(files) - set(kept))
    log.info(
        "%s: base_model_ignore_patterns leave out %d files: %s",
        source.describe(),
        len(ignored),
        ", ".join(ignored[:20]) + (", ..." if len(ignored) > 20 else ""),
    )
    return kept


def marker_path(
    hub_cache: Path, repo_type: str, repo_id: str, commit: str, ignore: tuple[str, ...] = ()
) -> Path:
    """The completion marker of a fetch; one per set of ignore patterns (each fetches other files)."""
    name = f"{repo_type}s--{repo_id.replace('/', '--')}--{commit}"
    if ignore:
        name += "--ignore-" + hashlib.sha256(json.dumps(sorted(ignore)).encode()).hexdigest()[:16]
    return hub_cache / ".kubetune-fetched" / f"{name}.json"


def fetch_hub(source: Source, progress: FetchProgress, report: Reporter) -> Fetched:
    from filelock import FileLock
    from huggingface_hub import HfApi, constants, hf_hub_download, try_to_load_from_cache

    repo_type = "model" if source.kind == "model" else "dataset"
    hub_cache = Path(constants.HF_HUB_CACHE)
    api = HfApi()
    lock_path = hub_cache / ".kubetune-fetched" / f"{repo_type}s--{source.uri.replace('/', '--')}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with _hub_errors(source):
        # A pinned commit needs no call at all when it is cached; a branch or tag is resolved once.
        commit = source.revision if source.revision and COMMIT.match(source.revision) else None
        with FileLock(str(lock_path)):
            if commit is None:
                revision = source.revision or constants.DEFAULT_REVISION
                commit = api.repo_info(source.uri, repo_type=repo_type, revision=revision).sha
                if commit is None:  # huggingface_hub types it optional; the hub always names it
                    raise FetchError(
                        source, f"the hub named no commit for revision {revision}", permanent=False
                    )
            marker = marker_path(hub_cache, repo_type, source.uri, commit, source.ignore_patterns)
            snapshot = str(
                hub_cache / f"{repo_type}s--{source.uri.replace('/', '--')}" / "snapshots" / commit
            )
            if marker.is_file():
                done = json.loads(marker.read_text())
                _write_ref(hub_cache, repo_type, source.uri, source.revision, commit)
                progress.bytes_done += done["bytes"]
                progress.bytes_total += done["bytes"]
                log.info(
                    "%s: cached at %s (%d files), nothing to download",
                    source.describe(),
                    commit,
                    done["files"],
                )
                return Fetched(source, commit, done["files"], done["bytes"], 0, snapshot)
            entries = _listing(api, source, repo_type, commit)
            sizes = {e.path: e.size for e in entries}
            files = wanted_files(source.kind, not_ignored(source, sorted(sizes)))
            total = sum(sizes[f] for f in files)
            progress.files_total, progress.bytes_total = len(files), progress.bytes_total + total
            report(progress)
            downloaded = 0
            counted = byte_counter(progress, report)
            for name in files:
                before = progress.bytes_done
                # a file an interrupted fetch already completed is in the cache: not downloaded again
                cached = try_to_load_from_cache(source.uri, name, revision=commit, repo_type=repo_type)
                hf_hub_download(source.uri, name, repo_type=repo_type, revision=commit, tqdm_class=counted)
                downloaded += not isinstance(cached, str)
                progress.files_done += 1
                progress.bytes_done = before + sizes[name]  # exact, whatever the progress bar counted
                report(progress)
            _write_ref(hub_cache, repo_type, source.uri, source.revision, commit)
            # Written last and atomically: a marker means every file is there.
            partial = marker.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps({"files": len(files), "bytes": total}))
            os.replace(partial, marker)
            log.info("%s: fetched %d files (%d bytes) at %s", source.describe(), len(files), total, commit)
            return Fetched(source, commit, len(files), total, downloaded, snapshot)


def byte_counter(progress: FetchProgress, report: Reporter):
    """A tqdm class for huggingface_hub's download progress bars that also counts the bytes into
    `progress` and reports them: a multi-gigabyte shard shows its bytes while it downloads."""
    from huggingface_hub.utils import tqdm

    class Counted(tqdm):
        def update(self, n=1):
            if n:
                progress.bytes_done += int(n)
                report(progress)
            return super().update(n)

    return Counted


def _listing(api, source: Source, repo_type: str, commit: str) -> list:
    """The files (not folders) of the repository at `commit`. No listing for a pinned commit is that
    revision not existing (the hub answers 404 for the tree of an unknown commit)."""
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    try:
        tree = api.list_repo_tree(source.uri, repo_type=repo_type, revision=commit, recursive=True)
        return [e for e in tree if getattr(e, "size", None) is not None]
    except (EntryNotFoundError, RevisionNotFoundError) as err:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        raise FetchError(source, f"revision {commit} not found on {endpoint}", permanent=True) from err


def _write_ref(hub_cache: Path, repo_type: str, repo_id: str, revision: str | None, commit: str) -> None:
    """`refs/<revision>` -> commit in huggingface_hub's cache layout, so an offline load of the branch or
    tag name (or of the default branch) reads the commit this fetch resolved."""
    from huggingface_hub import constants

    name = revision or constants.DEFAULT_REVISION
    if COMMIT.match(name):
        return
    ref = hub_cache / f"{repo_type}s--{repo_id.replace('/', '--')}" / "refs" / name
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)


class _hub_errors:
    """Turns huggingface_hub's errors into FetchError, permanent for 401/403/404 and unknown revisions."""

    def __init__(self, source: Source):
        self.source = source

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if err is None or isinstance(err, FetchError):
            return False
        import httpx  # huggingface_hub's HTTP client: connection errors are its TransportErrors
        from huggingface_hub import errors

        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        if isinstance(err, errors.RevisionNotFoundError):
            reason, permanent = f"revision {self.source.revision!r} not found on {endpoint}", True
        elif isinstance(err, errors.GatedRepoError):
            reason, permanent = (
                f"gated repository: this token has no access on {endpoint} (set HF_TOKEN)",
                True,
            )
        elif isinstance(err, errors.RepositoryNotFoundError):
            reason = (
                f"repository not found on {endpoint}, or not accessible with the credentials given "
                f"(HTTP {_status(err)}; a private repository needs HF_TOKEN"
                + (", and the revision must exist" if self.source.revision else "")
                + ")"
            )
            permanent = True
        elif isinstance(err, errors.EntryNotFoundError):
            reason, permanent = f"a file listed by the repository is missing on {endpoint}: {err}", True
        elif isinstance(err, errors.HfHubHTTPError) and _status(err) in (401, 403, 404):
            reason, permanent = f"HTTP {_status(err)} from {endpoint}: {_first_line(err)}", True
        elif isinstance(err, (errors.HfHubHTTPError, OSError, httpx.TransportError)):
            reason, permanent = f"{type(err).__name__} talking to {endpoint}: {_first_line(err)}", False
        else:
            return False
        raise FetchError(self.source, reason, permanent=permanent) from err


def _status(err) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _first_line(err) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


register_fetcher(HUB, fetch_hub)

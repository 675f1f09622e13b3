"""`kubetune fetch CONFIG`: download every remote source of a config once into the cache.

The operator runs it as the `fetch` init container of each worker pod (docs/kubernetes.md, "Models
and data"); on one machine it pre-fills the cache so `HF_HUB_OFFLINE=1 kubetune train` runs offline.
Exit codes: 0 fetched (or already cached), 2 bad config or a permanent failure (repository or
revision not found, no access), 1 a transient failure (network, server error) worth a retry.
Progress goes to stdout (a JSON line per file) and, in a job's pod, to the `fetch.json` key of the
job's progress ConfigMap, which the operator shows as the `Fetching` phase.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the training config whose sources to fetch")
    parser.add_argument("--overlay", action="append", default=[], metavar="YAML", help="overlay (repeatable)")


def run(args: argparse.Namespace) -> int:
    from kubetune.config import ConfigError, load_config
    from kubetune.sources import objectstore_fetch  # noqa: F401  (registers the s3/gs/az fetcher)
    from kubetune.sources.fetch import FetchError, fetch_sources
    from kubetune.train.commands.train import setup_logging
    from kubetune.train.errors import EXIT_BAD_INPUT, EXIT_FAILURE
    from kubetune.train.outputs import write_termination_log

    setup_logging()
    try:
        cfg = load_config(args.config, overlays=args.overlay)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        write_termination_log({"status": "bad_input", "exit_code": EXIT_BAD_INPUT, "reason": str(err)[:2000]})
        return EXIT_BAD_INPUT
    reporter = _Reporter()
    try:
        results = fetch_sources(cfg, reporter)
    except FetchError as err:
        reporter.fail(str(err))
        code = EXIT_BAD_INPUT if err.permanent else EXIT_FAILURE
        print(f"kubetune fetch: {err}", file=sys.stderr)
        write_termination_log(
            {
                "status": "bad_input" if err.permanent else "failed",
                "exit_code": code,
                "reason": f"fetch: {err}",
            }
        )
        return code
    finally:
        reporter.close()
    for fetched in results:
        print(
            json.dumps(
                {
                    "event": "fetched",
                    "key": fetched.source.key,
                    "source": fetched.source.uri,
                    "revision": fetched.revision,
                    "files": fetched.files,
                    "bytes": fetched.bytes,
                    "downloaded_files": fetched.downloaded_files,
                    "path": fetched.local_path,
                }
            ),
            flush=True,
        )
    return 0


class _Reporter:
    """stdout lines, plus the job's progress ConfigMap when in a pod."""

    def __init__(self):
        from kubetune.train.progress import KubernetesReporter

        self.kube = KubernetesReporter.from_environment()
        self.interval = float(os.environ.get("KUBETUNE_PROGRESS_INTERVAL", "5"))
        self.last_sent = 0.0
        self.last_milestone = None
        self.latest = None

    def __call__(self, progress) -> None:
        """Called at each step of the fetch (every downloaded chunk too): a line and a patch at the
        start of each source and file and at the end, else at most one per interval."""
        self.latest = progress
        now = time.monotonic()
        milestone = (progress.done, progress.source_index, progress.files_done, progress.files_total)
        if milestone == self.last_milestone and now - self.last_sent < self.interval:
            return
        self.last_milestone, self.last_sent = milestone, now
        status = progress.status()
        print(json.dumps({"event": "fetch", **status}), flush=True)
        if self.kube is not None:
            self.kube.announce_fetch(status)

    def fail(self, message: str) -> None:
        if self.kube is not None:
            status = self.latest.status() if self.latest is not None else {"done": False}
            self.kube.announce_fetch({**status, "error": message[:1000]})

    def close(self) -> None:
        if self.kube is not None:
            self.kube.close()

"""`output_uri`: upload the finished result to object storage (rank 0, after the final save).

Checked before training (rank 0 writes and deletes one probe object), so that credentials that cannot
write fail the run in seconds, not after hours of GPU time. After the final save rank 0 uploads the
files the save wrote (adapter or model, tokenizer), records where they went in the summary
(`output_uri`: uri, files, bytes), then uploads `training_summary.json` itself; KUBETUNE_COMPLETE is
written only after that, so a run whose upload failed is not complete and a restart uploads again.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kubetune.objectstore import ObjectStoreError, check_writable, upload_files
from kubetune.train.errors import UserError

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The upload after training failed (a training failure, exit 1: the result is still in output_dir)."""


def check_destination(cfg) -> None:
    """Bad input (exit 2) when output_uri cannot be written with the credentials in the environment."""
    if not cfg.output_uri:
        return
    try:
        check_writable(cfg.output_uri)
    except ObjectStoreError as err:
        raise UserError(f"output_uri: {err.message}", err.fix, key="output_uri") from None


def upload_result(cfg, output_dir: Path, names: list[str]) -> dict | None:
    """Upload `names` (files in output_dir) under output_uri; what went where, for the summary."""
    if not cfg.output_uri:
        return None
    try:
        return upload_files(output_dir, names, cfg.output_uri)
    except ObjectStoreError as err:
        raise ExportError(
            f"the result is saved in {output_dir} but its upload to output_uri failed: {err.message} "
            f"(fix: {err.fix})"
        ) from None

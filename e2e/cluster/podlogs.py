"""Keeps the local node's pod logs after their pods are deleted.

The kubelet writes ``<kubelet dir>/<ns>_<pod>_<uid>/<container>/<n>.log`` and removes a pod's directory
with the pod; the suites read a finished run's logs afterwards (a job scales its workers to zero). Each
log file is hard-linked into ``<kept dir>`` under the same relative path as soon as it appears: the link
is the same inode, so it keeps growing while the container writes and survives the kubelet's removal.
(The kubelet's log rotation would start a new inode; the node's containerLogMaxSize keeps test logs whole.)

    python e2e/cluster/podlogs.py <kubelet dir> <kept dir>
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def link_new(source: Path, kept: Path) -> int:
    """Hard-link every log file under source that has no link under kept yet; how many were new."""
    new = 0
    for path in source.glob("*/*/*.log"):
        target = kept / path.relative_to(source)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
            new += 1
        except FileNotFoundError:  # removed between the listing and the link
            continue
        except FileExistsError:
            continue
    return new


def main() -> None:
    source, kept = Path(sys.argv[1]), Path(sys.argv[2])
    source.mkdir(parents=True, exist_ok=True)
    while True:
        link_new(source, kept)
        time.sleep(0.2)


if __name__ == "__main__":
    main()

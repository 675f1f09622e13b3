"""The prepared-data cache: atomic directories, rank 0 builds while the other ranks wait."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest
from kubetune.data import DataError
from kubetune.data.cache import COMPLETE, build_or_wait


def writer(calls: list, delay: float = 0.0, fail: bool = False):
    def build(out):
        calls.append(out)
        time.sleep(delay)
        (out / "stats.json").write_text("{}")
        if fail:
            raise RuntimeError("tokenizer exploded")

    return build


def test_rank0_builds_once_and_later_calls_reuse(tmp_path):
    calls: list = []
    path, built = build_or_wait(tmp_path, "k1", writer(calls))
    assert built and (path / COMPLETE).exists() and (path / "stats.json").exists()
    again, built_again = build_or_wait(tmp_path, "k1", writer(calls))
    assert again == path and not built_again
    assert len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k1"]  # no temporary directory left


def test_other_ranks_wait_for_rank0_and_never_build(tmp_path):
    calls: list = []
    results = {}

    def rank(number):
        results[number] = build_or_wait(tmp_path, "k", writer(calls, delay=0.6), rank=number, poll_s=0.05)

    threads = [threading.Thread(target=rank, args=(n,)) for n in (1, 2, 0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(calls) == 1
    assert results[0] == (tmp_path / "k", True)
    assert results[1] == results[2] == (tmp_path / "k", False)


def test_a_failed_build_leaves_nothing_behind_and_waiters_fail_fast(tmp_path):
    with pytest.raises(RuntimeError, match="tokenizer exploded"):
        build_or_wait(tmp_path, "k", writer([], fail=True))
    assert not (tmp_path / "k").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["k.failed"]
    started = time.monotonic()
    with pytest.raises(DataError) as caught:
        build_or_wait(tmp_path, "k", writer([]), rank=1, timeout_s=30, poll_s=0.05)
    assert time.monotonic() - started < 5
    (problem,) = caught.value.problems
    assert problem.path == "dataset_prepared_path"
    assert "rank 0 failed to prepare the datasets: RuntimeError: tokenizer exploded" in problem.message
    # Rank 0 of the next attempt clears the marker and builds.
    path, built = build_or_wait(tmp_path, "k", writer([]))
    assert built and not (tmp_path / "k.failed").exists()


def test_waiting_times_out_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_PREPARE_TIMEOUT", "0.2")
    with pytest.raises(DataError) as caught:
        build_or_wait(tmp_path, "k", writer([]), rank=3, poll_s=0.05)
    (problem,) = caught.value.problems
    assert "waited 0.2s for rank 0 to prepare" in problem.message
    assert "KUBETUNE_PREPARE_TIMEOUT" in problem.fix and "storage every rank sees" in problem.fix


def test_a_failure_marker_of_an_earlier_attempt_is_not_this_attempts_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    with pytest.raises(RuntimeError):
        build_or_wait(tmp_path, "k", writer([], fail=True))
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # the restarted attempt
    with pytest.raises(DataError, match="waited"):
        build_or_wait(tmp_path, "k", writer([]), rank=1, timeout_s=0.3, poll_s=0.05)


KILLED_BUILDER = """
import sys, time
from pathlib import Path
from kubetune.data.cache import build_or_wait

def build(out):
    (out / "half-written.arrow").write_bytes(b"x" * 1000)
    print("building", flush=True)
    time.sleep(600)

build_or_wait(Path(sys.argv[1]), sys.argv[2], build)
"""


def start_builder(root, key) -> subprocess.Popen:
    """A process preparing `key` under root, stopped in the middle of its build."""
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_BUILDER, str(root), key], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline() == "building\n"
    return process


def staging_dirs(root) -> list[str]:
    return sorted(p.name.rpartition(".tmp-")[0] for p in root.glob(".*.tmp-*"))


def test_staging_left_by_a_killed_build_is_removed_at_the_next_start_and_a_live_one_is_kept(tmp_path, caplog):
    live = start_builder(tmp_path, "k2")
    try:
        killed = start_builder(tmp_path, "k1")  # its start leaves k2's staging alone too
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert staging_dirs(tmp_path) == [".k1", ".k2"]
        with caplog.at_level("WARNING"):
            path, built = build_or_wait(tmp_path, "k3", writer([]))
        assert built and (path / COMPLETE).exists()
        assert staging_dirs(tmp_path) == [".k2"]  # k2 is still being written: left alone
        assert "left by a data preparation that was killed" in caplog.text and ".k1.tmp-" in caplog.text
    finally:
        live.kill()
        live.wait(timeout=30)
    build_or_wait(tmp_path, "k2", writer([]))  # its builder is gone now: the next start cleans it up
    assert staging_dirs(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k2", "k3"]  # no lock file left either


def test_a_second_builder_of_the_same_key_waits_for_the_first_and_reuses_its_result(tmp_path):
    first_calls: list = []
    second_calls: list = []
    results = {}
    first = threading.Thread(
        target=lambda: results.setdefault(
            "first", build_or_wait(tmp_path, "k", writer(first_calls, delay=1.0))
        )
    )
    first.start()
    while not first_calls:
        time.sleep(0.01)
    results["second"] = build_or_wait(tmp_path, "k", writer(second_calls))
    first.join(timeout=30)
    assert results == {"first": (tmp_path / "k", True), "second": (tmp_path / "k", False)}
    assert len(first_calls) == 1 and second_calls == []

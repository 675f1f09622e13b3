"""`kubetune fetch` against a real hub-compatible server (olah): one download per file per cache, pinned
revisions, offline runs reading what was fetched, and failures that say which source and why."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections import Counter

import pytest

from .conftest import DATASET, MODEL, write_config

MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "chat_template.jinja"}  # fmt: skip


def new_downloads(hub, before: Counter) -> Counter:
    return hub.server.downloads() - before


def fetched_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{"event": "fetched"')]


def test_pinned_fetch_downloads_each_file_once_and_a_second_job_nothing(hub, tmp_path):
    config = write_config(
        tmp_path / "job1" / "config.yml",
        revision_of_model=hub.v1,
        datasets=[{"path": DATASET, "type": "alpaca", "revision": hub.data}],
    )
    cache = tmp_path / "cache"  # the cache volume both jobs mount
    before = hub.server.downloads()
    first = hub.fetch(config, cache, KUBETUNE_PROGRESS_INTERVAL="0")
    assert first.returncode == 0, first.stderr
    got = new_downloads(hub, before)
    assert got == Counter(
        {**{f"models/{MODEL}/{name}": 1 for name in MODEL_FILES}, f"datasets/{DATASET}/train.jsonl": 1}
    ), got
    lines = fetched_lines(first.stdout)
    assert [(x["key"], x["revision"]) for x in lines] == [
        ("base_model", hub.v1),
        ("datasets[0].path", hub.data),
    ]
    assert lines[0]["downloaded_files"] == len(MODEL_FILES) and lines[0]["bytes"] > 500_000
    # Bytes are counted while a file downloads (from the client's progress bar), not only after it.
    repo = hub.server.mirrors / "models" / MODEL
    sizes = [(repo / name).stat().st_size for name in sorted(MODEL_FILES)]
    done_by_files = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
    reports = [json.loads(x) for x in first.stdout.splitlines() if x.startswith('{"event": "fetch"')]
    model_reports = [r for r in reports if r["source"] == 1]
    assert any(r["bytesDone"] > done_by_files[r["filesDone"]] for r in model_reports), model_reports
    assert (
        reports[-1]["done"]
        and reports[-1]["bytesDone"] == reports[-1]["bytesTotal"] == lines[0]["bytes"] + lines[1]["bytes"]
    )

    # A second job naming the same model and revision: nothing downloaded, not even a request (pinned commits).
    requests_before = len(hub.server.requests())
    second = hub.fetch(write_config(tmp_path / "job2" / "config.yml", revision_of_model=hub.v1,
                                    datasets=[{"path": DATASET, "type": "alpaca", "revision": hub.data}]), cache)  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert [x["downloaded_files"] for x in fetched_lines(second.stdout)] == [0, 0]
    assert hub.server.requests()[requests_before:] == []


def test_pods_sharing_a_cache_download_each_file_once(hub, tmp_path):
    """Two pods' fetch steps start together on one cache volume: the first downloads under the lock,
    the other waits and finds it done. The branch (main) is resolved by each: an API call, no file."""
    config = write_config(tmp_path / "config.yml")
    cache = tmp_path / "cache"
    before = hub.server.downloads()
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "kubetune", "fetch", str(config)],
            env=hub.env(cache),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    got = new_downloads(hub, before)
    assert set(got.values()) == {1} and len(got) == len(MODEL_FILES) + 1, got
    downloaded = sorted(fetched_lines(out)[0]["downloaded_files"] for out, _ in outputs)
    assert downloaded == [0, len(MODEL_FILES)]
    assert {fetched_lines(out)[0]["revision"] for out, _ in outputs} == {hub.v2}  # main


PROBE = """
import json, sys
import transformers
from kubetune.config import load_config
from kubetune.data import load_tokenizer
from kubetune.data.loading import load_rows

cfg = load_config(sys.argv[1])
model_config = transformers.AutoConfig.from_pretrained(cfg.base_model, **cfg.revision_for(cfg.base_model))
tokenizer = load_tokenizer(cfg)
rows = load_rows(cfg.datasets[0], "datasets[0]", cfg.source_dir)
print(json.dumps({"layers": model_config.num_hidden_layers, "rows": len(rows), "vocab": len(tokenizer)}))
"""


@pytest.mark.parametrize("pin", ["v1", None])
def test_an_offline_run_reads_the_fetched_revision(hub, tmp_path, pin):
    """With HF_HUB_OFFLINE=1 the run's loads (config, tokenizer, dataset rows) read the cache the fetch
    filled, at the pinned commit, or at the commit the branch had when fetched; no request reaches the hub."""
    keys = {"revision_of_model": hub.v1} if pin else {}
    config = write_config(tmp_path / "config.yml", **keys)
    cache = tmp_path / "cache"
    assert hub.fetch(config, cache).returncode == 0
    requests_before = len(hub.server.requests())
    probe = subprocess.run([sys.executable, "-c", PROBE, str(config)], env=hub.env(cache, HF_HUB_OFFLINE="1"),
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-3000:]
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    tiny_layers = 2  # kubetune.tiny's model; v2 (main) has one fewer
    assert seen["layers"] == (tiny_layers if pin else tiny_layers - 1)
    assert seen["rows"] == 64 and seen["vocab"] > 100
    assert hub.server.requests()[requests_before:] == []


def test_offline_without_a_fetch_says_to_fetch(hub, tmp_path):
    config = write_config(tmp_path / "config.yml")
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from kubetune.config import load_config; from kubetune.data.loading "
         "import load_rows; cfg = load_config(sys.argv[1]); load_rows(cfg.datasets[0], 'datasets[0]')", str(config)],
        env=hub.env(tmp_path / "empty-cache", HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert probe.returncode != 0
    assert "is not in the cache" in probe.stderr and "kubetune fetch" in probe.stderr


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"base_model": "acme/no-such-model"}, "base_model 'acme/no-such-model'"),
        ({"revision_of_model": "no-such-branch"}, "base_model 'acme/tiny' at revision no-such-branch"),
        ({"revision_of_model": "0" * 40}, f"base_model 'acme/tiny' at revision {'0' * 40}"),
        (
            {"datasets": [{"path": "acme/no-such-data", "type": "alpaca"}]},
            "datasets[0].path 'acme/no-such-data'",
        ),
    ],
    ids=["unknown-repository", "unknown-branch", "unknown-commit", "unknown-dataset"],
)
def test_a_failed_fetch_is_bad_input_naming_the_source(hub, tmp_path, keys, named):
    """Not found / no access / no such revision cannot get better by retrying: exit 2 (the operator
    fails the job at once), the source and the reason in stderr and in the termination message."""
    termination = tmp_path / "termination-log"
    termination.write_text("")
    run = hub.fetch(write_config(tmp_path / "config.yml", **keys), tmp_path / "cache",
                    KUBETUNE_TERMINATION_LOG=str(termination))  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert named in run.stderr and "not found" in run.stderr, run.stderr
    record = json.loads(termination.read_text())
    assert record["status"] == "bad_input" and record["exit_code"] == 2
    assert named in record["reason"] and record["reason"].startswith("fetch: ")


def test_an_unreachable_hub_is_a_transient_failure(hub, tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    termination = tmp_path / "termination-log"
    termination.write_text("")
    run = hub.fetch(write_config(tmp_path / "config.yml"), tmp_path / "cache",
                    HF_ENDPOINT=f"http://127.0.0.1:{closed}", KUBETUNE_TERMINATION_LOG=str(termination))  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "base_model 'acme/tiny'" in run.stderr
    assert json.loads(termination.read_text())["status"] == "failed"


def test_an_interrupted_fetch_resumes_without_downloading_its_files_again(hub, tmp_path):
    """The marker is written last: a fetch stopped before it (a pod deleted mid-download) lists the
    repository again, but files already in the cache are not downloaded again."""
    config = write_config(tmp_path / "config.yml", revision_of_model=hub.v1)
    cache = tmp_path / "cache"
    assert hub.fetch(config, cache).returncode == 0
    markers = list((cache / "hub" / ".kubetune-fetched").glob("*.json"))
    assert len(markers) == 2  # the model's and the dataset's
    for marker in markers:
        marker.unlink()  # as if the pod had stopped just before writing them
    before = hub.server.downloads()
    again = hub.fetch(config, cache)
    assert again.returncode == 0, again.stderr
    assert [x["downloaded_files"] for x in fetched_lines(again.stdout)] == [0, 0]
    assert hub.server.downloads() - before == Counter()
    assert len(list((cache / "hub" / ".kubetune-fetched").glob("*.json"))) == 2


LOAD_MODEL = """
import json, sys, transformers
from kubetune.config import load_config
from kubetune.data import load_tokenizer
cfg = load_config(sys.argv[1])
model = transformers.AutoModelForCausalLM.from_pretrained(cfg.base_model, **cfg.revision_for(cfg.base_model))
print(json.dumps({"parameters": sum(p.numel() for p in model.parameters()), "vocab": len(load_tokenizer(cfg))}))
"""


def test_base_model_ignore_patterns_leave_those_files_out_and_the_model_still_loads(hub, tmp_path):
    """Axolotl's base_model_ignore_patterns: the files they match are not downloaded (huggingface_hub's
    glob matching), the offline run loads the model from the rest; the same commit fetched without them
    downloads just the files left out; patterns that leave out what the run loads stop the fetch."""
    from kubetune.tiny import make_fixture

    files = tmp_path / "repo"
    tiny = make_fixture(tmp_path / "tiny", examples=8, seed=0)
    import shutil

    shutil.copytree(tiny["model"], files)
    (files / "original").mkdir()
    (files / "original" / "params.json").write_text('{"dim": 64}')
    (files / "original" / "tokenizer.model").write_bytes(b"\0" * 2048)
    (files / "README.md").write_text("# tiny\n")
    repo = "acme/tiny-with-originals"
    commit = hub.server.commit("model", repo, files, "with original/ and a README")
    extras = {
        f"models/{repo}/{name}": 1
        for name in ("original/params.json", "original/tokenizer.model", "README.md")
    }
    model_files = {f"models/{repo}/{name}": 1 for name in MODEL_FILES}
    cache = tmp_path / "cache"
    keys = {
        "base_model": repo,
        "revision_of_model": commit,
        "datasets": [{"path": "train.jsonl", "type": "alpaca"}],
    }
    config = write_config(
        tmp_path / "job" / "config.yml", base_model_ignore_patterns=["original/*", "*.md"], **keys
    )
    before = hub.server.downloads()
    fetched = hub.fetch(config, cache)
    assert fetched.returncode == 0, fetched.stderr
    assert new_downloads(hub, before) == Counter(model_files)  # none of the ignored files
    assert fetched_lines(fetched.stdout)[0]["files"] == len(MODEL_FILES)
    assert "base_model_ignore_patterns leave out 3 files" in fetched.stderr
    load = subprocess.run([sys.executable, "-c", LOAD_MODEL, str(config)], env=hub.env(cache, HF_HUB_OFFLINE="1"),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert load.returncode == 0, load.stderr[-3000:]
    assert json.loads(load.stdout.strip().splitlines()[-1])["parameters"] > 100_000

    # Without the patterns the same commit is another fetch (its own marker): only the files left out come.
    before = hub.server.downloads()
    whole = hub.fetch(write_config(tmp_path / "whole" / "config.yml", **keys), cache)
    assert whole.returncode == 0, whole.stderr
    assert new_downloads(hub, before) == Counter(extras)

    refused = hub.fetch(write_config(tmp_path / "bad" / "config.yml", base_model_ignore_patterns=["*.json", "*.safetensors"],
                                     **keys), tmp_path / "other-cache")  # fmt: skip
    assert refused.returncode == 2
    assert "leave out config.json and every weight file (model.safetensors)" in refused.stderr, refused.stderr

"""`kubetune train` with object storage on both ends, against a real S3 server (SeaweedFS): the dataset
is a jsonl object in a bucket, `output_uri` uploads the result, the uploaded adapter loads in plain peft,
and the secret access key in the environment shows up in none of the logs, the summary, the
termination message or the operator's status built from it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kubetune.cli import main as cli

from tests.s3_server import s3_server

from .support import subprocess_env

pytestmark = pytest.mark.slow

LORA = {"lora_target_linear": True, "lora_r": 8, "lora_alpha": 16}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3(store, monkeypatch):
    from obstore.fsspec import FsspecStore

    for name, value in store.env().items():
        monkeypatch.setenv(name, value)
    return FsspecStore("s3", skip_instance_cache=True)


def test_s3_data_trains_and_the_result_is_uploaded_and_loads_in_peft(store, s3, make_config, tiny, tmp_path):
    import torch
    from kubetune_operator.policies.outcomes import uploaded_to
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tests.unit.operator.test_progress import add_pod, setup, status

    s3.put_file(tiny["train"], f"{store.bucket}/data/train.jsonl")
    destination = f"s3://{store.bucket}/results/run-1"
    cfg, path = make_config(
        "s3run",
        max_steps=3,
        datasets=[{"path": f"s3://{store.bucket}/data/train.jsonl", "type": "alpaca"}],
        dataset_prepared_path=str(tmp_path / "prepared"),
        output_uri=destination,
        **LORA,
    )
    termination = tmp_path / "termination-log"
    termination.write_text("")
    env = subprocess_env() | store.env()
    env |= {"KUBETUNE_TERMINATION_LOG": str(termination), "KUBETUNE_SOURCE_CACHE": str(tmp_path / "sources")}
    done = subprocess.run(
        [sys.executable, "-m", "kubetune", "train", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = Path(cfg.output_dir)

    # The data came from the bucket: one copy in the source cache, the same rows as the local file.
    (copy,) = (tmp_path / "sources").glob("*/data/train.jsonl")
    assert copy.read_bytes() == Path(tiny["train"]).read_bytes()

    # The summary says where the result went; the store holds exactly those files.
    summary = json.loads((out / "training_summary.json").read_text())
    record = summary["output_uri"]
    assert record["uri"] == destination and record["bytes"] > 0
    assert {"adapter_model.safetensors", "adapter_config.json", "training_summary.json"} <= set(
        record["files"]
    )
    stored = sorted(name.rsplit("/", 1)[-1] for name in s3.find(f"{store.bucket}/results/run-1"))
    assert stored == sorted(record["files"])
    assert json.loads(s3.cat_file(f"{store.bucket}/results/run-1/training_summary.json")) == summary

    # Downloaded from the store, the adapter loads in plain peft with the trained weights.
    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    for name in record["files"]:
        s3.get_file(f"{store.bucket}/results/run-1/{name}", str(downloaded / name))
    base = AutoModelForCausalLM.from_pretrained(tiny["model"])
    model = PeftModel.from_pretrained(base, str(downloaded))
    trained = load_file(out / "adapter_model.safetensors")
    loaded = {name: tensor for name, tensor in model.state_dict().items() if "lora_" in name}
    assert len(loaded) == len(trained) > 0
    for name, tensor in trained.items():
        match = [value for key, value in loaded.items() if key.replace(".default", "") == name]
        assert len(match) == 1 and torch.equal(match[0], tensor), name

    # The operator records the upload in status.outputs.uri, from rank 0's termination message.
    message = termination.read_text()
    assert json.loads(message)["output_uri"]["uri"] == destination
    kube, reconciler = setup()
    add_pod(kube, 0, state={"terminated": {"exitCode": 0, "message": message}})
    assert reconciler.reconcile("default", "demo").phase == "Succeeded"
    assert status(kube)["outputs"]["uri"] == destination == uploaded_to(json.loads(message))

    # The planted secret (the real secret access key of the store) is nowhere the run wrote.
    secret = store.secret_key
    for where, text in {
        "logs": done.stdout + done.stderr,
        "summary": (out / "training_summary.json").read_text(),
        "termination message": message,
        "status": json.dumps(status(kube)),
        "events": json.dumps(kube.events),
    }.items():
        assert secret not in text, where


def test_credentials_that_cannot_write_output_uri_stop_the_run_before_training(
    store, s3, make_config, tmp_path, monkeypatch, capsys
):
    for name, value in store.env(read_only=True).items():
        monkeypatch.setenv(name, value)
    cfg, path = make_config("readonly", max_steps=2, output_uri=f"s3://{store.bucket}/results/denied", **LORA)
    assert cli(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "output_uri" in err and "access denied while trying to write" in err
    assert f"s3://{store.bucket}/results/denied" in err and store.read_only_secret_key not in err
    assert not (Path(cfg.output_dir) / "training_summary.json").exists()


def test_a_base_model_in_object_storage_is_downloaded_once_and_trains(store, s3, make_config, tiny, tmp_path):
    """base_model: s3://bucket/models/tiny (a prefix holding config.json, the weights and the tokenizer)
    is read from its local copy in the source cache; a second run (another rank, a later job) downloads
    nothing; revision_of_model, a hub pin, is refused for it."""
    for file in Path(tiny["model"]).iterdir():
        s3.put_file(str(file), f"{store.bucket}/models/tiny/{file.name}")
    keys = {"base_model": f"s3://{store.bucket}/models/tiny", "max_steps": 2, **LORA}
    env = subprocess_env() | store.env() | {"KUBETUNE_SOURCE_CACHE": str(tmp_path / "sources")}
    logs = []
    for name in ("first", "second"):
        cfg, path = make_config(f"s3model-{name}", **keys)
        done = subprocess.run(
            [sys.executable, "-m", "kubetune", "train", str(path)], env=env, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads((Path(cfg.output_dir) / "training_summary.json").read_text())["steps"] == 2
        logs.append(done.stderr)
    objects = len(list(Path(tiny["model"]).iterdir()))
    assert f"fetched {objects} object(s)" in logs[0] and "using the copy" in logs[1]
    assert "fetched" not in logs[1]
    (copy,) = (tmp_path / "sources").glob("*/data/config.json")
    assert copy.read_bytes() == (Path(tiny["model"]) / "config.json").read_bytes()

    cfg, path = make_config("s3model-pinned", revision_of_model="main", **keys)
    assert cli(["train", str(path)]) == 2

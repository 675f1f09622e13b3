"""A stand-in for `torchrun -m kubetune train CONFIG` in the operator's cluster tests.

The operator's tests must not depend on the training engine, so the operator runs this instead
(KUBETUNE_OPERATOR_TORCHRUN="python fake_trainer.py"). It checks what the operator promised the
pod (the config file, the PET_* variables), then behaves as FAKE_MODE says:

    run      rank 0 reports progress through its ConfigMap every FAKE_INTERVAL seconds; runs on
    succeed  as `run` for FAKE_STEPS steps, then rank 0 writes KUBETUNE_COMPLETE, reports
             completed, lingers FAKE_EXIT_DELAY seconds (default 0: the runtime's summary and exit
             take a while), writes its termination message, and every rank exits 0; a restarted
             trainer that finds KUBETUNE_COMPLETE exits 0 at once, silently, as the runtime does
    crash    exits 1 after FAKE_DELAY seconds with a traceback-like message
    oom      allocates memory until killed (a real node's memory limit: OOMKilled)
    crash-once-rank1  rank 1 crashes once (a marker in the outputs directory remembers), then runs

Progress goes out exactly as the runtime sends it: a JSON merge patch of the job's progress
ConfigMap (KUBETUNE_PROGRESS_CONFIGMAP, key progress.json) with the pod's service-account token,
over plain HTTPS (stdlib only).
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.request
from pathlib import Path

import yaml

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def patch_progress(progress: dict, key: str = "progress.json") -> None:
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    ns, name = os.environ["KUBETUNE_JOB_NAMESPACE"], os.environ["KUBETUNE_PROGRESS_CONFIGMAP"]
    url = f"https://{host}:{port}/api/v1/namespaces/{ns}/configmaps/{name}"
    body = json.dumps({"data": {key: json.dumps(progress)}}).encode()
    request = urllib.request.Request(url, data=body, method="PATCH")
    request.add_header("Authorization", f"Bearer {(SA_DIR / 'token').read_text().strip()}")
    request.add_header("Content-Type", "application/merge-patch+json")
    context = ssl.create_default_context(cafile=str(SA_DIR / "ca.crt"))
    context.check_hostname = False  # the local apiserver's certificate names its own address
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            response.read()
    except OSError as error:  # progress is best effort, as in the runtime
        print(f"progress report failed: {error}", flush=True)


def fake_fetch(config_path: Path) -> int:
    """The fetch step (init container `fetch`, KUBETUNE_OPERATOR_FETCH="python fake_trainer.py --fetch"):
    reports fetch.json progress as `kubetune fetch` does, then, as FAKE_FETCH says:

        ok (default)  every FAKE_INTERVAL seconds one of FAKE_FETCH_FILES files (default 1) of 1 MB, then exit 0
        missing       exit 2 with the termination message of a repository that does not exist
    """
    config = yaml.safe_load(config_path.read_text())
    source = f"base_model {config['base_model']!r}"
    files = int(os.environ.get("FAKE_FETCH_FILES", "1"))
    interval = float(os.environ.get("FAKE_INTERVAL", "1"))
    report = {"sources": 1, "source": 1, "current": source, "filesTotal": files, "bytesTotal": files * 10**6}
    if os.environ.get("FAKE_FETCH", "ok") == "missing":
        reason = (
            f"fetch: {source}: repository not found on the hub, or not accessible with the credentials given"
        )
        patch_progress(
            {**report, "filesDone": 0, "bytesDone": 0, "done": False, "error": reason}, "fetch.json"
        )
        Path("/dev/termination-log").write_text(
            json.dumps({"status": "bad_input", "exit_code": 2, "reason": reason})
        )
        print(reason, file=sys.stderr, flush=True)
        return 2
    for done in range(files + 1):
        patch_progress(
            {**report, "filesDone": done, "bytesDone": done * 10**6, "done": done == files}, "fetch.json"
        )
        if done < files:
            time.sleep(interval)
    return 0


def main() -> int:
    config_path = Path(sys.argv[-1])
    if "--fetch" in sys.argv:
        return fake_fetch(config_path)
    config = yaml.safe_load(config_path.read_text())
    rank = int(os.environ["PET_NODE_RANK"])
    mode = os.environ.get("FAKE_MODE", "run")
    steps = int(os.environ.get("FAKE_STEPS", "1000000"))
    interval = float(os.environ.get("FAKE_INTERVAL", "1"))
    output_dir = Path(config["output_dir"])
    print(
        f"fake trainer: rank {rank}, mode {mode}, nnodes {os.environ['PET_NNODES']}, outputs {output_dir}",
        flush=True,
    )

    if (output_dir / "KUBETUNE_COMPLETE").is_file():
        print("fake trainer: already complete", flush=True)
        return 0

    if mode == "oom":  # allocate (and touch) memory until the kernel kills the container
        hoard = []
        while True:
            hoard.append(bytearray(32 * 1024 * 1024))
            print(f"fake trainer: holding {32 * len(hoard)} MiB", flush=True)
            time.sleep(0.05)
    if mode == "crash":
        time.sleep(float(os.environ.get("FAKE_DELAY", "1")))
        print("Traceback (most recent call last):\nRuntimeError: fake trainer crashed", flush=True)
        return 1
    if mode == "crash-once-rank1" and rank == 1:
        marker = output_dir / "crashed-once"
        if not marker.exists():
            output_dir.mkdir(parents=True, exist_ok=True)
            marker.write_text("1")
            time.sleep(1)
            print("RuntimeError: rank 1 lost its GPU", flush=True)
            return 1

    step = 0
    while step < steps or mode != "succeed":
        step += 1
        if rank == 0 and step <= steps:
            patch_progress({"step": step, "totalSteps": steps, "percent": f"{100 * step // steps}%",
                            "loss": round(2.0 / step, 4), "epoch": 0.0})  # fmt: skip
        time.sleep(interval)
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "KUBETUNE_COMPLETE").write_text("done\n")
        patch_progress({"step": steps, "totalSteps": steps, "percent": "100%", "completed": True,
                        "outputDir": str(output_dir)})  # fmt: skip
        time.sleep(float(os.environ.get("FAKE_EXIT_DELAY", "0")))
        summary = {"steps": steps, "final_loss": round(2.0 / steps, 4), "output_dir": str(output_dir)}
        Path("/dev/termination-log").write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

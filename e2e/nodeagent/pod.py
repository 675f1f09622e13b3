"""One pod's lifecycle on the node: sandbox, init containers, containers, restarts, deletion."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from kubernetes.client.rest import ApiException

from nodeagent import podspec
from nodeagent.cleanup import unmount_under

log = logging.getLogger("nodeagent.pod")

SANDBOX = str(Path(__file__).with_name("sandbox.py"))
# The checkout whose virtualenv runs the pods; kept visible inside every pod (sandbox.py).
PROJECT_DIR = str(Path(__file__).resolve().parents[2])
MAX_BACKOFF = float(os.environ.get("KUBETUNE_NODEAGENT_MAX_BACKOFF", "10"))
BACKOFF_RESET = 60.0  # a container that ran this long starts its back-off again from 1 s
PASS_ENV_PREFIXES = ("OPENBLAS_", "OMP_", "MKL_", "LANG", "LC_", "TZ", "HF_", "TRANSFORMERS_", "TORCH_")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Container:
    def __init__(self, spec: dict, init: bool, log_dir: Path, restart_count: int = 0) -> None:
        self.spec = spec
        self.name = spec["name"]
        self.init = init
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.restart_count = restart_count
        self.runs = 0  # processes started by this agent
        self.state: dict = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict = {}
        self.proc: subprocess.Popen | None = None
        self.started_mono = 0.0
        self.next_start = 0.0
        self.backoff = 0.0
        self.done = False  # terminated and not restarting
        self.term_file: Path | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_file(self, previous: bool = False) -> Path | None:
        n = self.runs - (2 if previous else 1)
        if n < 0:
            return None
        return self.log_dir / f"{n}.log"

    def status(self, pod_uid: str) -> dict:
        return {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "containerID": f"kubetune://{pod_uid}/{self.name}/{max(self.runs - 1, 0)}",
            "ready": "running" in self.state,
            "started": "running" in self.state,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }


class PodWorker(threading.Thread):
    def __init__(self, agent, pod: dict) -> None:
        super().__init__(name=f"pod-{pod['metadata']['namespace']}/{pod['metadata']['name']}", daemon=True)
        self.agent = agent
        self.pod = pod
        md = pod["metadata"]
        self.ns, self.name, self.uid = md["namespace"], md["name"], md["uid"]
        self.key = self.uid.replace("-", "")[:12]
        self.dir = agent.node_dir / "pods" / self.uid
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "pgids").mkdir(exist_ok=True)
        self.logs_root = agent.state / "logs" / "pods" / f"{self.ns}_{self.name}_{self.uid}"
        self._cond = threading.Condition()
        self._deleting = False
        self._gone = False  # the pod object no longer exists
        self.pod_ip = ""
        self.netns = ""
        self.volumes: dict = {}
        self.phase = "Pending"
        self.message = ""
        self.reason = ""
        spec = pod["spec"]
        prev = {
            c["name"]: c.get("restartCount", 0)
            for c in (pod.get("status") or {}).get("containerStatuses") or []
        }
        self.init_ctrs = [
            Container(c, True, self.logs_root / c["name"]) for c in spec.get("initContainers") or []
        ]
        self.ctrs = [
            Container(c, False, self.logs_root / c["name"], prev.get(c["name"], 0))
            for c in spec.get("containers") or []
        ]
        self.initialized = not self.init_ctrs
        self.start_time = now()
        self._last_status: str | None = None

    # ---------------------------------------------------------------- events from the watch
    def update(self, pod: dict) -> None:
        with self._cond:
            self.pod["metadata"] = pod["metadata"]
            if pod["metadata"].get("deletionTimestamp"):
                self._deleting = True
            self._cond.notify_all()

    def gone(self) -> None:
        with self._cond:
            self._deleting = True
            self._gone = True
            self._cond.notify_all()

    def container(self, name: str) -> Container | None:
        return next((c for c in self.ctrs + self.init_ctrs if c.name == name), None)

    # ---------------------------------------------------------------- main loop
    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod worker %s/%s crashed", self.ns, self.name)
            self._kill_all(0)
        finally:
            self._cleanup()
            self.agent.worker_done(self)

    def _wait(self, seconds: float) -> None:
        with self._cond:
            if not self._deleting:
                self._cond.wait(seconds)

    def _run(self) -> None:
        self._push_status()
        # sandbox: volumes (retried while referenced objects are missing) and network
        while not self._deleting:
            try:
                self.volumes = podspec.prepare_volumes(
                    self.agent.core, self.pod, self.dir / "volumes", {}, self.agent.allocatable
                )
                break
            except podspec.NotReady as e:
                self._set_waiting_all("ContainerCreating", str(e))
                self._push_status()
                self._wait(1.0)
        if self._deleting:
            self._terminate()
            return
        if self.pod["spec"].get("hostNetwork"):
            self.pod_ip = self.agent.network.gateway  # the node's address; no namespace of its own
        else:
            self.netns, self.pod_ip = self.agent.network.setup(self.key)
        self.agent.hosts_changed()
        self._push_status()
        terminal = False
        while not self._deleting:
            self._step()
            terminal = self._is_terminal()
            self._push_status()
            if terminal:
                break
            self._wait(0.2)
        if terminal:
            self._release_sandbox()
            with self._cond:
                while not self._deleting:
                    self._cond.wait(5.0)
        self._terminate()

    def _step(self) -> None:
        mono = time.monotonic()
        policy = self.pod["spec"].get("restartPolicy", "Always")
        if not self.initialized:
            for c in self.init_ctrs:
                if c.done:
                    continue
                self._reap(c, policy if policy != "Always" else "OnFailure")
                if c.done:
                    continue
                if not c.running and mono >= c.next_start:
                    self._start(c)
                return  # one init container at a time
            self.initialized = True
        for c in self.ctrs:
            self._reap(c, policy)
            if not c.done and not c.running and mono >= c.next_start:
                self._start(c)

    def _reap(self, c: Container, policy: str) -> None:
        if c.proc is None or c.proc.poll() is None:
            return
        rc = c.proc.returncode
        try:
            (self.dir / "pgids" / str(c.proc.pid)).unlink()
        except OSError:
            pass
        c.proc = None
        code = 128 - rc if rc < 0 else rc  # killed by signal N -> 128+N
        msg = ""
        if c.term_file is not None and c.term_file.exists():
            msg = c.term_file.read_text(errors="replace")[:4096]
        if not msg and code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            lf = c.log_file()
            if lf is not None and lf.exists():
                msg = "\n".join(lf.read_text(errors="replace").splitlines()[-80:])[-2048:]
        term = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": c.state.get("running", {}).get("startedAt", now()),
            "finishedAt": now(),
            "containerID": f"kubetune://{self.uid}/{c.name}/{c.runs - 1}",
        }
        if rc < 0:
            term["signal"] = -rc
        if msg:
            term["message"] = msg
        restart = policy == "Always" or (policy == "OnFailure" and code != 0)
        ran = time.monotonic() - c.started_mono
        if restart and not self._deleting:
            c.backoff = 1.0 if (c.backoff == 0 or ran > BACKOFF_RESET) else min(c.backoff * 2, MAX_BACKOFF)
            c.next_start = time.monotonic() + c.backoff
            c.last_state = {"terminated": term}
            c.state = {
                "waiting": {
                    "reason": "CrashLoopBackOff" if code != 0 else "Completed",
                    "message": f"back-off {c.backoff:.0f}s restarting failed container="
                    f"{c.name} pod={self.name}_{self.ns}({self.uid})",
                }
            }
            c.restart_count += 1
        else:
            c.state = {"terminated": term}
            c.done = True
        log.info("%s/%s container %s exited %d (restart=%s)", self.ns, self.name, c.name, code, restart)

    def _base_env(self) -> dict[str, str]:
        venv_bin = os.path.dirname(sys.executable)
        env = {k: v for k, v in os.environ.items() if k.startswith(PASS_ENV_PREFIXES)}
        env.update(
            {
                "PATH": f"{venv_bin}:{DEFAULT_PATH}",
                "HOME": "/root",
                "HOSTNAME": self.hostname,
                "KUBERNETES_SERVICE_HOST": self.agent.network.gateway,
                "KUBERNETES_SERVICE_PORT": str(self.agent.apiserver_port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(self.agent.apiserver_port),
                "KUBERNETES_PORT": f"tcp://{self.agent.network.gateway}:{self.agent.apiserver_port}",
            }
        )
        if sys.prefix != sys.base_prefix:
            env["VIRTUAL_ENV"] = sys.prefix
        return env

    @property
    def hostname(self) -> str:
        return (self.pod["spec"].get("hostname") or self.name)[:63]

    def _start(self, c: Container) -> None:
        try:
            env = podspec.container_env(
                self.agent.core, self.pod_with_status(), c.spec, self._base_env(), self.agent.allocatable
            )
            mounts = podspec.container_mounts(c.spec, self.volumes)
        except podspec.NotReady as e:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            c.next_start = time.monotonic() + 1.0
            return
        argv = [podspec.expand(a, env) for a in (c.spec.get("command") or []) + (c.spec.get("args") or [])]
        if not argv:
            c.state = {
                "waiting": {
                    "reason": "CreateContainerError",
                    "message": "no command: images are not run by this node agent",
                }
            }
            c.next_start = time.monotonic() + 5.0
            return
        cdir = self.dir / "containers" / c.name
        cdir.mkdir(parents=True, exist_ok=True)
        c.term_file = cdir / "termination-log"
        c.term_file.write_bytes(b"")
        tpath = c.spec.get("terminationMessagePath") or "/dev/termination-log"
        mounts.append({"source": str(c.term_file), "target": tpath})
        mounts.append({"source": str(self.dir / "hosts"), "target": "/etc/hosts", "readonly": True})
        if not (self.dir / "hosts").exists():
            (self.dir / "hosts").write_text(self.agent.hosts_for(self))
        # No DNS server: names resolve from /etc/hosts, anything else fails at once (a nameserver
        # the pod cannot reach would make every unknown name cost the resolver's full timeout).
        resolv = self.dir / "resolv.conf"
        if not resolv.exists():
            resolv.write_text(
                f"search {self.ns}.svc.cluster.local svc.cluster.local cluster.local\n"
                "nameserver 127.0.0.1\noptions ndots:5 timeout:1 attempts:1\n"
            )
        mounts.append({"source": str(resolv), "target": "/etc/resolv.conf", "readonly": True})
        workdir = c.spec.get("workingDir") or str(self.dir / "root")
        spec = {
            "netns": self.netns,
            "hostname": self.hostname,
            "mounts": mounts,
            "argv": argv,
            "env": env,
            "cwd": workdir,
            "scratch": str(cdir),
            "keep_visible": [PROJECT_DIR, sys.prefix],
        }
        spec_file = cdir / "spec.json"
        spec_file.write_text(json.dumps(spec))
        c.log_dir.mkdir(parents=True, exist_ok=True)
        logf = open(c.log_dir / f"{c.runs}.log", "wb")  # noqa: SIM115
        c.runs += 1
        c.proc = subprocess.Popen(
            [sys.executable, "-S", SANDBOX, str(spec_file)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            env={"PATH": DEFAULT_PATH},
        )
        logf.close()
        (self.dir / "pgids" / str(c.proc.pid)).write_text("")
        c.started_mono = time.monotonic()
        c.state = {"running": {"startedAt": now()}}
        log.info("%s/%s started container %s: %s", self.ns, self.name, c.name, argv)

    def _set_waiting_all(self, reason: str, message: str) -> None:
        for c in self.init_ctrs + self.ctrs:
            c.state = {"waiting": {"reason": reason, "message": message}}

    def _is_terminal(self) -> bool:
        policy = self.pod["spec"].get("restartPolicy", "Always")
        if any(c.done and c.state["terminated"]["exitCode"] != 0 for c in self.init_ctrs):
            self.phase = "Failed"
            for c in self.ctrs:
                c.state = {"waiting": {"reason": "PodInitializing"}}
            return True
        if policy == "Always" or not all(c.done for c in self.ctrs):
            return False
        ok = all(c.state["terminated"]["exitCode"] == 0 for c in self.ctrs)
        self.phase = "Succeeded" if ok else "Failed"
        return True

    # ---------------------------------------------------------------- status
    def pod_with_status(self) -> dict:
        p = dict(self.pod)
        p["status"] = {
            "hostIP": self.agent.network.gateway,
            "podIP": self.pod_ip,
            "hostIPs": [{"ip": self.agent.network.gateway}],
            "podIPs": [{"ip": self.pod_ip}] if self.pod_ip else [],
        }
        return p

    def _push_status(self, final: bool = False) -> None:
        if self._gone:
            return
        if self.phase not in ("Succeeded", "Failed"):
            if not self.initialized:
                self.phase = "Pending"
            elif any(c.running or c.proc is not None or not c.done and c.runs > 0 for c in self.ctrs):
                self.phase = "Running"
        ready = bool(self.ctrs) and all("running" in c.state for c in self.ctrs) and not self._deleting
        t = now()

        def cond(ctype: str, ok: bool, reason: str | None = None) -> dict:
            d = {
                "type": ctype,
                "status": "True" if ok else "False",
                "lastProbeTime": None,
                "lastTransitionTime": t,
            }
            if reason and not ok:
                d["reason"] = reason
            return d

        conds = [
            cond("PodReadyToStartContainers", bool(self.netns) or bool(self.pod_ip)),
            cond("Initialized", self.initialized, "ContainersNotInitialized"),
            cond(
                "Ready",
                ready,
                "ContainersNotReady" if self.phase not in ("Succeeded", "Failed") else "PodCompleted",
            ),
            cond(
                "ContainersReady",
                ready,
                "ContainersNotReady" if self.phase not in ("Succeeded", "Failed") else "PodCompleted",
            ),
            cond("PodScheduled", True),
        ]
        old = {c["type"]: c for c in (self.pod.get("status") or {}).get("conditions") or []}
        for c in conds:  # keep transition times of unchanged conditions
            o = old.get(c["type"])
            if o and o.get("status") == c["status"] and o.get("lastTransitionTime"):
                c["lastTransitionTime"] = o["lastTransitionTime"]
        status = {
            "phase": self.phase,
            "conditions": conds,
            "hostIP": self.agent.network.gateway,
            "hostIPs": [{"ip": self.agent.network.gateway}],
            "podIP": self.pod_ip or None,
            "podIPs": [{"ip": self.pod_ip}] if self.pod_ip else None,
            "startTime": self.start_time,
            "qosClass": (self.pod.get("status") or {}).get("qosClass", "BestEffort"),
            "initContainerStatuses": [c.status(self.uid) for c in self.init_ctrs] or None,
            "containerStatuses": [c.status(self.uid) for c in self.ctrs],
        }
        if self.message:
            status["message"] = self.message
        key = json.dumps({k: v for k, v in status.items() if k != "conditions"}, sort_keys=True) + json.dumps(
            [(c["type"], c["status"]) for c in conds]
        )
        if key == self._last_status and not final:
            return
        try:
            res = self.agent.core.patch_namespaced_pod_status(
                self.name, self.ns, {"status": status}, _content_type="application/merge-patch+json"
            )
            self.pod["status"] = self.agent.api.sanitize_for_serialization(res).get("status")
            self._last_status = key
        except ApiException as e:
            if e.status == 404:
                self._gone = True
            else:
                log.warning("status update of %s/%s failed: %s", self.ns, self.name, e.reason)

    # ---------------------------------------------------------------- termination
    def _grace(self) -> float:
        md = self.pod["metadata"]
        g = md.get("deletionGracePeriodSeconds")
        if g is None:
            g = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        return float(g)

    def _kill_all(self, grace: float) -> None:
        procs = [c.proc for c in self.init_ctrs + self.ctrs if c.proc is not None and c.proc.poll() is None]
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
            except OSError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.05)
        for p in procs:
            try:  # the whole group: children that outlived the leader too
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.wait()

    def _terminate(self) -> None:
        log.info("%s/%s: terminating (grace %.0fs)", self.ns, self.name, self._grace())
        self._kill_all(self._grace())
        for c in self.init_ctrs + self.ctrs:
            if c.proc is not None:
                self._reap(c, "Never")
        self._push_status(final=True)
        if not self._gone:
            from kubernetes.client import V1DeleteOptions, V1Preconditions

            try:
                self.agent.core.delete_namespaced_pod(
                    self.name,
                    self.ns,
                    body=V1DeleteOptions(grace_period_seconds=0, preconditions=V1Preconditions(uid=self.uid)),
                )
            except ApiException as e:
                if e.status not in (404, 409):
                    log.warning("delete of %s/%s failed: %s", self.ns, self.name, e.reason)

    def _release_sandbox(self) -> None:
        if self.netns:
            self.agent.network.teardown(self.key)
            self.netns = ""

    def _cleanup(self) -> None:
        self._release_sandbox()
        unmount_under(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)

"""Turn a pod spec into what a process needs: environment, volume directories, mounts.

Pods are plain dicts in the API's JSON form (camelCase keys).
"""

from __future__ import annotations

import base64
import math
import os
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

from kubernetes.client.rest import ApiException
from kubernetes.utils.quantity import parse_quantity


class NotReady(Exception):
    """A referenced object (ConfigMap, Secret, PVC, ...) is missing or not usable yet."""


_LABEL_RE = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_ref(pod: dict, path: str) -> str:
    md, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    m = _LABEL_RE.match(path)
    if m:
        return (md.get(m.group(1)) or {}).get(m.group(2), "")
    simple = {
        "metadata.name": md.get("name", ""),
        "metadata.namespace": md.get("namespace", ""),
        "metadata.uid": md.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": status.get("hostIP", ""),
        "status.hostIPs": ",".join(i["ip"] for i in status.get("hostIPs") or []),
        "status.podIP": status.get("podIP", ""),
        "status.podIPs": ",".join(i["ip"] for i in status.get("podIPs") or []),
    }
    if path in simple:
        return simple[path]
    if path in ("metadata.labels", "metadata.annotations"):
        d = md.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(d.items()))
    raise NotReady(f"unsupported fieldRef {path!r}")


def resource_ref(pod: dict, container: str | None, ref: dict, node_alloc: dict) -> str:
    cname = ref.get("containerName") or container
    ctr = next(
        (
            c
            for c in pod["spec"].get("containers", []) + pod["spec"].get("initContainers", [])
            if c["name"] == cname
        ),
        None,
    )
    if ctr is None:
        raise NotReady(f"resourceFieldRef: no container {cname!r}")
    kind, _, res = ref["resource"].partition(".")
    value = ((ctr.get("resources") or {}).get(kind) or {}).get(res)
    if value is None:
        # no limit: the node's allocatable, as the kubelet does; no request: 0
        value = node_alloc.get(res, "0") if kind == "limits" else "0"
    q = parse_quantity(value)
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(int(math.ceil(Decimal(q) / Decimal(divisor))))


def expand(s: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion; $$ escapes."""
    out, i = [], 0
    while i < len(s):
        if s.startswith("$$", i):
            out.append("$")
            i += 2
        elif s.startswith("$(", i):
            j = s.find(")", i)
            name = s[i + 2 : j] if j > 0 else None
            if name is not None and name in env:
                out.append(env[name])
                i = j + 1
            else:
                out.append(s[i])
                i += 1
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _read_source(read, kind: str, ns: str, name: str, optional: bool):
    """The ConfigMap or Secret a volume or env var names; None when it is missing and optional."""
    try:
        return read(name, ns)
    except ApiException as e:
        if e.status == 404:
            if optional:
                return None
            raise NotReady(f'{kind} "{name}" not found') from None
        raise


def _configmap(core, ns: str, name: str, optional: bool) -> dict[str, bytes] | None:
    cm = _read_source(core.read_namespaced_config_map, "configmap", ns, name, optional)
    if cm is None:
        return None
    data = {k: v.encode() for k, v in (cm.data or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()})
    return data


def _secret(core, ns: str, name: str, optional: bool) -> dict[str, bytes] | None:
    s = _read_source(core.read_namespaced_secret, "secret", ns, name, optional)
    if s is None:
        return None
    return {k: base64.b64decode(v) for k, v in (s.data or {}).items()}


def container_env(core, pod: dict, ctr: dict, base: dict[str, str], node_alloc: dict) -> dict[str, str]:
    ns = pod["metadata"]["namespace"]
    env = dict(base)
    for src in ctr.get("envFrom") or []:
        prefix = src.get("prefix", "")
        if "configMapRef" in src:
            r = src["configMapRef"]
            d = _configmap(core, ns, r["name"], r.get("optional", False)) or {}
        else:
            r = src["secretRef"]
            d = _secret(core, ns, r["name"], r.get("optional", False)) or {}
        env.update({prefix + k: v.decode() for k, v in d.items()})
    for e in ctr.get("env") or []:
        name = e["name"]
        if "value" in e or "valueFrom" not in e:
            env[name] = expand(e.get("value", ""), env)
            continue
        vf = e["valueFrom"]
        if "fieldRef" in vf:
            env[name] = field_ref(pod, vf["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in vf:
            env[name] = resource_ref(pod, ctr["name"], vf["resourceFieldRef"], node_alloc)
        elif "configMapKeyRef" in vf:
            r = vf["configMapKeyRef"]
            d = _configmap(core, ns, r["name"], r.get("optional", False))
            if d is None or r["key"] not in d:
                if r.get("optional"):
                    continue
                raise NotReady(f"couldn't find key {r['key']} in ConfigMap {ns}/{r['name']}")
            env[name] = d[r["key"]].decode()
        elif "secretKeyRef" in vf:
            r = vf["secretKeyRef"]
            d = _secret(core, ns, r["name"], r.get("optional", False))
            if d is None or r["key"] not in d:
                if r.get("optional"):
                    continue
                raise NotReady(f"couldn't find key {r['key']} in Secret {ns}/{r['name']}")
            env[name] = d[r["key"]].decode()
        else:
            raise NotReady(f"unsupported valueFrom for env {name}: {sorted(vf)}")
    return env


def _write_items(dest: Path, data: dict[str, bytes], items: list | None, mode: int | None) -> None:
    mode = 0o644 if mode is None else mode
    pairs = (
        [(it["key"], it["path"], it.get("mode", mode)) for it in items]
        if items
        else [(k, k, mode) for k in data]
    )
    for key, path, m in pairs:
        if key not in data:
            raise NotReady(f"key {key!r} not found")
        p = dest / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data[key])
        os.chmod(p, m)


def _token(core, pod: dict, sa_src: dict) -> bytes:
    md = pod["metadata"]
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": [sa_src["audience"]] if sa_src.get("audience") else [],
            "expirationSeconds": sa_src.get("expirationSeconds", 3600),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": md["name"], "uid": md["uid"]},
        },
    }
    sa = pod["spec"].get("serviceAccountName") or "default"
    tr = core.create_namespaced_service_account_token(sa, md["namespace"], body)
    return tr.status.token.encode()


def _downward_items(pod: dict, items: list, node_alloc: dict) -> dict[str, bytes]:
    out = {}
    for it in items:
        if "fieldRef" in it:
            out[it["path"]] = field_ref(pod, it["fieldRef"]["fieldPath"]).encode()
        else:
            out[it["path"]] = resource_ref(pod, None, it["resourceFieldRef"], node_alloc).encode()
    return out


def prepare_volumes(core, pod: dict, vol_dir: Path, pv_dirs: dict, node_alloc: dict) -> dict[str, dict]:
    """Materialise every volume of the pod; returns name -> {"source": dir} or {"tmpfs": opts}."""
    ns = pod["metadata"]["namespace"]
    out: dict[str, dict] = {}
    for v in pod["spec"].get("volumes") or []:
        name = v["name"]
        d = vol_dir / name
        if "emptyDir" in v:
            d.mkdir(parents=True, exist_ok=True)
            ed = v["emptyDir"] or {}
            if ed.get("medium") == "Memory" and not os.path.ismount(d):
                opts = "mode=1777"
                if ed.get("sizeLimit"):
                    opts += f",size={int(parse_quantity(ed['sizeLimit']))}"
                subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], check=True)
            out[name] = {"source": str(d)}
        elif "hostPath" in v:
            hp = v["hostPath"]
            p = Path(hp["path"])
            t = hp.get("type") or ""
            if t == "DirectoryOrCreate":
                p.mkdir(parents=True, exist_ok=True)
            elif t == "FileOrCreate" and not p.exists():
                p.parent.mkdir(parents=True, exist_ok=True)
                p.touch()
            elif t in ("Directory", "File", "Socket") and not p.exists():
                raise NotReady(f"hostPath {p} does not exist")
            out[name] = {"source": str(p)}
        elif "persistentVolumeClaim" in v:
            claim = v["persistentVolumeClaim"]["claimName"]
            try:
                pvc = core.read_namespaced_persistent_volume_claim(claim, ns)
            except ApiException as e:
                if e.status == 404:
                    raise NotReady(f'persistentvolumeclaim "{claim}" not found') from None
                raise
            if (pvc.status.phase or "") != "Bound" or not pvc.spec.volume_name:
                raise NotReady(f'persistentvolumeclaim "{claim}" is not bound')
            pv = core.read_persistent_volume(pvc.spec.volume_name)
            path = (
                pv.spec.host_path.path if pv.spec.host_path else pv.spec.local.path if pv.spec.local else None
            )
            if not path:
                raise NotReady(f"persistentvolume {pv.metadata.name} has no local path")
            Path(path).mkdir(parents=True, exist_ok=True)
            out[name] = {"source": path, "readonly": v["persistentVolumeClaim"].get("readOnly", False)}
        elif any(k in v for k in ("configMap", "secret", "downwardAPI", "projected")):
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
            if "configMap" in v:
                c = v["configMap"]
                data = _configmap(core, ns, c["name"], c.get("optional", False)) or {}
                _write_items(d, data, c.get("items"), c.get("defaultMode"))
            elif "secret" in v:
                c = v["secret"]
                data = _secret(core, ns, c["secretName"], c.get("optional", False)) or {}
                _write_items(d, data, c.get("items"), c.get("defaultMode", 0o644))
            elif "downwardAPI" in v:
                c = v["downwardAPI"]
                _write_items(
                    d, _downward_items(pod, c.get("items") or [], node_alloc), None, c.get("defaultMode")
                )
            else:
                c = v["projected"]
                mode = c.get("defaultMode")
                for src in c.get("sources") or []:
                    if "configMap" in src:
                        s = src["configMap"]
                        data = _configmap(core, ns, s["name"], s.get("optional", False)) or {}
                        _write_items(d, data, s.get("items"), mode)
                    elif "secret" in src:
                        s = src["secret"]
                        data = _secret(core, ns, s["name"], s.get("optional", False)) or {}
                        _write_items(d, data, s.get("items"), mode)
                    elif "downwardAPI" in src:
                        items = src["downwardAPI"].get("items") or []
                        _write_items(d, _downward_items(pod, items, node_alloc), None, mode)
                    elif "serviceAccountToken" in src:
                        s = src["serviceAccountToken"]
                        _write_items(
                            d,
                            {"t": _token(core, pod, s)},
                            [{"key": "t", "path": s["path"]}],
                            mode if mode is not None else 0o600,
                        )
                    else:
                        raise NotReady(f"unsupported projected source {sorted(src)}")
            out[name] = {"source": str(d), "readonly": True}
        else:
            kinds = sorted(k for k in v if k != "name")
            raise NotReady(f"unsupported volume type {kinds} for volume {name!r}")
    return out


def container_mounts(ctr: dict, volumes: dict[str, dict]) -> list[dict]:
    mounts = []
    for vm in ctr.get("volumeMounts") or []:
        vol = volumes.get(vm["name"])
        if vol is None:
            raise NotReady(f"volumeMount {vm['name']!r} has no volume")
        src = vol["source"]
        if vm.get("subPath"):
            src = os.path.join(src, vm["subPath"])
            if not os.path.exists(src):
                os.makedirs(src, exist_ok=True)
        mounts.append(
            {
                "source": src,
                "target": vm["mountPath"],
                "readonly": bool(vm.get("readOnly") or vol.get("readonly")),
            }
        )
    return mounts

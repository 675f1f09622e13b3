"""Training pods meet the restricted Pod Security Standard; jobs may tighten it, never loosen it; the
operator's policy (chart values training.policy) refuses hostPath, service accounts and images."""

import pytest
from kubetune_operator import builders, main
from kubetune_operator.builders import BuildOptions, JobRef
from kubetune_operator.spec import AdmissionPolicy, validate_job

from tests.unit.operator.cases import job

# Volume types the restricted standard allows (the rest need `privileged`, hostPath above all).
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}  # fmt: skip


def restricted_violations(pod: dict) -> list[str]:
    """The checks of https://kubernetes.io/docs/concepts/security/pod-security-standards/ (restricted)."""
    found = []
    context = pod.get("securityContext") or {}
    for container in pod["containers"]:
        own = container.get("securityContext") or {}
        name = container["name"]
        if own.get("privileged"):
            found.append(f"{name}: privileged")
        if own.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation != false")
        if "ALL" not in (own.get("capabilities") or {}).get("drop", []):
            found.append(f"{name}: capabilities.drop lacks ALL")
        if set((own.get("capabilities") or {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities added")
        if not (own.get("runAsNonRoot") or context.get("runAsNonRoot")):
            found.append(f"{name}: runAsNonRoot unset")
        if 0 in (own.get("runAsUser"), context.get("runAsUser")):
            found.append(f"{name}: runAsUser 0")
        seccomp = (own.get("seccompProfile") or context.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile {seccomp}")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {sorted(kinds)}")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            found.append(key)
    return found


def pod_of(**spec):
    # nfs (the cases' default shared outputs) is not a restricted volume type; a claim is.
    spec.setdefault("storage", {"claimTemplate": {"size": "1Gi", "accessModes": ["ReadWriteMany"]}})
    body = job(**spec)
    body["metadata"]["uid"] = "u-1"
    validation = validate_job(body)
    assert validation.ok, validation.problems
    objects = builders.children(JobRef.of(body), validation.spec, validation.config.to_mapping(), 2,
                                BuildOptions())  # fmt: skip
    (sts,) = [o for o in objects if o["kind"] == "StatefulSet"]
    return sts["spec"]["template"]["spec"]


def test_default_workers_meet_the_restricted_standard():
    pod = pod_of()
    assert restricted_violations(pod) == []
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_a_job_tightens_the_contexts():
    pod = pod_of(
        podSecurityContext={"runAsUser": 2000, "fsGroup": 3000, "supplementalGroups": [4000],
                            "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/train.json"}},
        securityContext={"readOnlyRootFilesystem": True, "capabilities": {"drop": ["NET_RAW"]}},
    )  # fmt: skip
    assert restricted_violations(pod) == []
    context = pod["securityContext"]
    assert (
        context["runAsUser"] == 2000
        and context["fsGroup"] == 3000
        and context["supplementalGroups"] == [4000]
    )
    assert context["seccompProfile"] == {"type": "Localhost", "localhostProfile": "profiles/train.json"}
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL", "NET_RAW"]}
    # A read-only image still needs a scratch directory and a home for the libraries' caches.
    assert {"name": "kubetune-tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "kubetune-tmp", "emptyDir": {}} in pod["volumes"]
    assert {"name": "HOME", "value": "/tmp"} in container["env"]


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"podSecurityContext": {"runAsUser": 0}}, "spec.podSecurityContext.runAsUser"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "spec.podSecurityContext.runAsNonRoot"),
        ({"podSecurityContext": {"seccompProfile": {"type": "Unconfined"}}},
         "spec.podSecurityContext.seccompProfile.type"),
        ({"securityContext": {"privileged": True}}, "spec.securityContext.privileged"),
        ({"securityContext": {"allowPrivilegeEscalation": True}}, "spec.securityContext.allowPrivilegeEscalation"),
        ({"securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}, "spec.securityContext.capabilities.add"),
        ({"securityContext": {"runAsUser": 0}}, "spec.securityContext.runAsUser"),
    ],
)  # fmt: skip
def test_loosening_is_refused_with_the_key_path(spec, path):
    assert [p.path for p in validate_job(job(**spec)).problems] == [path]


def test_host_path_is_refused_unless_the_operator_allows_it():
    volumes = {"volumes": [{"name": "data", "hostPath": {"path": "/srv"}}],
               "cache": {"volume": {"hostPath": {"path": "/cache"}}}}  # fmt: skip
    problems = validate_job(job(**volumes)).problems
    assert [p.path for p in problems] == ["spec.volumes[0].hostPath", "spec.cache.volume.hostPath"]
    assert validate_job(job(**volumes), AdmissionPolicy(allow_host_path=True)).ok


def test_service_accounts_and_images_by_policy():
    strict = AdmissionPolicy(allow_service_accounts=False, allowed_images=("ghcr.io/kubetune/runtime:*",))
    body = job(serviceAccountName="cluster-admin-sa", image="evil.example/miner:latest")
    problems = validate_job(body, strict).problems
    assert [p.path for p in problems] == ["spec.serviceAccountName", "spec.image"]
    assert "ghcr.io/kubetune/runtime:*" in problems[1].fix
    assert validate_job(job(image="ghcr.io/kubetune/runtime:0.1.0"), strict).ok
    assert validate_job(job(), strict).ok  # no spec.image: the operator's own default
    assert validate_job(body).ok  # the default policy allows both


def test_the_policy_comes_from_flags_or_the_environment(monkeypatch):
    args = main.build_parser().parse_args([])
    assert main.policy_for(args) == AdmissionPolicy()
    monkeypatch.setenv("KUBETUNE_ALLOW_HOST_PATH", "true")
    monkeypatch.setenv("KUBETUNE_ALLOWED_IMAGES", "a/*, b/*")
    args = main.build_parser().parse_args(["--no-allow-service-accounts", "--allowed-image", "c/*"])
    assert main.policy_for(args) == AdmissionPolicy(
        allow_host_path=True, allow_service_accounts=False, allowed_images=("a/*", "b/*", "c/*")
    )


def test_a_network_policy_admits_only_the_jobs_own_pods_when_enabled():
    body = job()
    body["metadata"]["uid"] = "u-1"
    validation = validate_job(body)
    ref, spec, config = JobRef.of(body), validation.spec, validation.config.to_mapping()
    plain = builders.children(ref, spec, config, 2, BuildOptions())
    assert "NetworkPolicy" not in [o["kind"] for o in plain]
    objects = builders.children(ref, spec, config, 2, BuildOptions(network_policy=True))
    kinds = [o["kind"] for o in objects]
    assert kinds.index("NetworkPolicy") < kinds.index("StatefulSet")
    (policy,) = [o for o in objects if o["kind"] == "NetworkPolicy"]
    selector = {"app.kubernetes.io/managed-by": "kubetune", "kubetune.dev/job-name": "demo"}
    assert policy["spec"] == {
        "podSelector": {"matchLabels": selector},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": selector}}]}],
    }
    assert main.build_parser().parse_args(["--network-policy"]).network_policy is True


def test_the_webhook_refuses_by_the_operators_policy_with_the_key_path():
    import kopf
    from kubetune_operator import webhook

    strict = AdmissionPolicy(allowed_images=("ghcr.io/kubetune/*",))
    with pytest.raises(kopf.AdmissionError) as refused:
        webhook.review(job(image="docker.io/someone/miner"), strict)
    assert "spec.image: image 'docker.io/someone/miner' is not in this operator's allowed list" in str(
        refused.value
    )
    webhook.review(job(image="ghcr.io/kubetune/runtime:0.1.0"), strict)  # admitted: no exception

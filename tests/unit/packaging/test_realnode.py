"""The local cluster's real node (e2e/cluster/realnode.py): the files it writes must agree with each other
and with the control plane (DNS address, pod network, sockets), and image names must resolve the way the
CRI resolves a pod's image."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from e2e.cluster import realnode
from tests.e2e.smoke import without_cri_prefix


def _node(tmp_path: Path) -> realnode.Node:
    return realnode.Node(
        state=tmp_path,
        bin_dir=tmp_path / "bin",
        kube_bin_dir=tmp_path / "kbin",
        name="n1",
        gateway="10.244.0.1",
        bridge="kt0",
        pod_cidr="10.244.0.0/24",
        service_cidr="10.96.0.0/16",
        dns_ip="10.96.0.10",
        kubelet_port=10250,
        apiserver_port=6443,
        gpus="8",
    )


@pytest.mark.parametrize(
    ("ref", "full"),
    [
        ("kubetune/runtime:dev", "docker.io/kubetune/runtime:dev"),
        ("busybox:1", "docker.io/library/busybox:1"),
        ("ghcr.io/kubetune/operator:0.1.0", "ghcr.io/kubetune/operator:0.1.0"),
        ("localhost/kubetune/pause:3.10", "localhost/kubetune/pause:3.10"),
        ("registry:5000/a/b:1", "registry:5000/a/b:1"),
    ],
)
def test_image_names_are_completed_like_the_cri_does(ref: str, full: str) -> None:
    assert realnode.normalized(ref) == full


def _archive(path: Path, ref: str, digest: str) -> Path:
    index = {
        "schemaVersion": 2,
        "manifests": [{"digest": digest, "annotations": {"org.opencontainers.image.ref.name": ref}}],
    }
    with tarfile.open(path, "w") as t:
        data = json.dumps(index).encode()
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return path


def test_archive_image_reads_the_name_and_digest_buildah_writes(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "a.oci.tar", "ghcr.io/kubetune/runtime:0.1.0", "sha256:aa")
    assert realnode.archive_image(archive) == ("ghcr.io/kubetune/runtime:0.1.0", "sha256:aa")


class _FakeCtr:
    """containerd's image store as `ctr` shows and changes it (the calls import_images makes)."""

    def __init__(self, images: dict[str, str]) -> None:
        self.images = dict(images)
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, node, *args: str, **_):
        self.calls.append(args)
        out = ""
        if args[:2] == ("images", "list"):
            out = "REF TYPE DIGEST SIZE PLATFORMS LABELS\n" + "".join(
                f"{ref} application/vnd.oci.image.manifest.v1+json {d} 1.0 GiB linux/amd64 -\n"
                for ref, d in self.images.items()
            )
        elif args[:3] == ("images", "rm", "--sync"):
            for ref in args[3:]:
                del self.images[ref]
        elif args[:2] == ("images", "import"):
            ref, digest = realnode.archive_image(Path(args[-1])) or ("", "")
            self.images[ref] = digest
        elif args[:2] == ("images", "tag"):
            self.images[args[-1]] = self.images[args[-2]]
        return subprocess.CompletedProcess(args, 0, out, "")


def test_a_rebuilt_image_of_the_same_name_replaces_the_old_one_and_its_tags(tmp_path, monkeypatch):
    ref, tag = "ghcr.io/kubetune/runtime:0.1.0", "docker.io/kubetune/runtime:dev"
    pause, cri_id, pause_id = realnode.PAUSE_IMAGE, "sha256:cfg-old", "sha256:cfg-pause"
    # the CRI names each image it has seen by its id too: the old image's id record keeps it alive
    fake = _FakeCtr(
        {ref: "sha256:old", tag: "sha256:old", pause: "sha256:p", cri_id: "sha256:old", pause_id: "sha256:p"}
    )
    monkeypatch.setattr(realnode, "ctr", fake)
    new = _archive(tmp_path / "rt.oci.tar", ref, "sha256:new")
    realnode.import_images(_node(tmp_path), [(new, ["kubetune/runtime:dev"])], print)
    assert fake.images == {ref: "sha256:new", tag: "sha256:new", pause: "sha256:p", pause_id: "sha256:p"}
    # The import comes first, while the old image still holds the layers they share (the runtime's
    # dependencies), so containerd does not store them twice; then the old image's id record and a throwaway
    # name are removed synchronously, which makes containerd collect the old image's own content.
    calls = fake.calls
    imported = calls.index(("images", "import", "--no-unpack=false", str(new)))
    collected = calls.index(("images", "rm", "--sync", cri_id, realnode.GC_TRIGGER))
    assert imported < calls.index(("images", "tag", "--force", ref, tag)) < collected == len(calls) - 1
    assert not any(call[:2] == ("images", "rm") and ref in call for call in calls), "the name never goes away"
    fake.calls.clear()
    realnode.import_images(_node(tmp_path), [(new, ["kubetune/runtime:dev"])], print)
    assert fake.calls == [("images", "list")]  # the same image again: nothing to do, nothing collected


def test_a_first_import_collects_nothing(tmp_path, monkeypatch):
    fake = _FakeCtr({realnode.PAUSE_IMAGE: "sha256:p", "sha256:cfg-pause": "sha256:p"})
    monkeypatch.setattr(realnode, "ctr", fake)
    new = _archive(tmp_path / "rt.oci.tar", "ghcr.io/kubetune/runtime:0.1.0", "sha256:new")
    realnode.import_images(_node(tmp_path), [(new, ["kubetune/runtime:dev"])], print)
    assert not any(call[:2] == ("images", "rm") for call in fake.calls)


def test_dns_service_leads_to_coredns_on_the_node(tmp_path: Path) -> None:
    node = _node(tmp_path)
    service, slice_ = realnode.dns_objects(node)
    assert service["spec"]["clusterIP"] == realnode.kubelet_config(node)["clusterDNS"][0]
    assert "selector" not in service["spec"]  # its only endpoint is the host process
    assert slice_["metadata"]["labels"]["kubernetes.io/service-name"] == service["metadata"]["name"]
    assert slice_["endpoints"][0]["addresses"] == [node.gateway]
    by_name = {p["name"]: p for p in slice_["ports"]}
    for p in service["spec"]["ports"]:
        assert p["port"] == 53
        assert by_name[p["name"]]["port"] == p["targetPort"] == node.dns_port
        assert by_name[p["name"]]["protocol"] == p["protocol"]
    assert f".:{node.dns_port}" in realnode.corefile(node, tmp_path / "kc")
    assert f"bind {node.gateway}" in realnode.corefile(node, tmp_path / "kc")


def test_containerd_kubelet_and_cni_agree(tmp_path: Path) -> None:
    import tomllib  # 3.11+, like the images' Python; the package itself supports 3.10

    node = _node(tmp_path)
    containerd = tomllib.loads(realnode.containerd_config(node))
    kubelet = realnode.kubelet_config(node)
    assert containerd["grpc"]["address"] == str(node.sock)
    assert kubelet["containerRuntimeEndpoint"] == f"unix://{node.sock}"
    runtime = containerd["plugins"]["io.containerd.cri.v1.runtime"]
    # no CAP_SYS_RESOURCE on these machines: without it every sandbox fails (docs/testing.md)
    assert runtime["restrict_oom_score_adj"] is True
    assert runtime["cni"]["conf_dir"] == str(node.dir / "cni")
    images = containerd["plugins"]["io.containerd.cri.v1.images"]
    assert images["pinned_images"]["sandbox"] == realnode.PAUSE_IMAGE
    assert kubelet["failCgroupV1"] is False and kubelet["cgroupDriver"] == "cgroupfs"
    bridge = realnode.cni_config(node)["plugins"][0]
    assert bridge["bridge"] == node.bridge
    assert bridge["ipam"]["ranges"] == [[{"subnet": node.pod_cidr, "gateway": node.gateway}]]


def test_the_built_pause_image_is_the_one_containerd_pins() -> None:
    build = (Path(realnode.__file__).parents[1] / "node" / "build.sh").read_text()
    assert f"PAUSE_IMAGE={realnode.PAUSE_IMAGE} " in build


def test_images_to_import_start_with_the_pause_image_then_the_named_archives(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_NODE_IMAGES", "/a/op.oci.tar,/b/rt.oci.tar=kubetune/runtime:dev+other:1,")
    got = realnode.images_to_import(tmp_path, tmp_path, print)
    assert got == [
        (tmp_path / "pause.oci.tar", []),
        (Path("/a/op.oci.tar"), []),
        (Path("/b/rt.oci.tar"), ["kubetune/runtime:dev", "other:1"]),
    ]


def test_pod_logs_are_kept_by_hard_links_that_outlive_the_kubelets_removal(tmp_path):
    from e2e.cluster import podlogs

    log = tmp_path / "kubelet" / "ns_p-0_uid" / "trainer" / "0.log"
    log.parent.mkdir(parents=True)
    log.write_text("2026-12-05T00:00:00.1Z stdout F first\n")
    assert podlogs.link_new(tmp_path / "kubelet", tmp_path / "kept") == 1
    with log.open("a") as f:  # the container goes on writing
        f.write("2026-12-05T00:00:00.2Z stdout P sec\n2026-12-05T00:00:00.3Z stdout F ond\n")
    log.unlink()  # the pod is deleted
    kept = (tmp_path / "kept" / "ns_p-0_uid" / "trainer" / "0.log").read_text()
    assert without_cri_prefix(kept) == "first\nsecond"
    assert podlogs.link_new(tmp_path / "kubelet", tmp_path / "kept") == 0


def test_kubelet_registers_as_the_node_its_certificate_names_at_the_bridge_address(tmp_path: Path) -> None:
    node = _node(tmp_path)
    argv = realnode.kubelet_argv(node, tmp_path / "kubelet.kubeconfig")
    assert argv[0] == str(node.bin_dir / "kubelet")
    assert f"--hostname-override={node.name}" in argv
    assert f"--node-ip={node.gateway}" in argv
    assert f"--config={node.dir / 'kubelet.yaml'}" in argv
    assert f"--kubeconfig={tmp_path / 'kubelet.kubeconfig'}" in argv


def test_the_removed_node_agent_is_refused_by_name(tmp_path):
    script = Path(realnode.__file__).with_name("localcluster.py")
    env = {**os.environ, "KUBETUNE_NODE": "agent", "KUBETUNE_STATE_DIR": str(tmp_path)}
    p = subprocess.run([sys.executable, str(script), "status"], capture_output=True, text=True, env=env)
    assert (
        p.returncode == 1 and "the node agent was removed" in p.stderr and "Unset KUBETUNE_NODE" in p.stderr
    )

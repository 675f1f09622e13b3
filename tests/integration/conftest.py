"""The fixtures the operator's integration modules share: an operator watching the module's namespaces
(`<PREFIX>-*`, PREFIX a module constant, so modules never act on each other's jobs), a fresh namespace per
test under that prefix, and a Kube client of the local control plane. A module that needs another kind
of operator (the admission webhook's) defines its own `operator`."""

from __future__ import annotations

import pytest
from kubetune_operator.k8s import Kube

from tests.unit.operator.cluster_support import running_operator


@pytest.fixture(scope="module")
def operator(request, kube_cluster, tmp_path_factory):
    prefix = request.module.PREFIX
    with running_operator(kube_cluster, tmp_path_factory.mktemp("operator"), prefix) as process:
        yield process


@pytest.fixture
def ns(request, kube_cluster):
    name = kube_cluster.create_namespace(prefix=request.module.PREFIX)
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def kube(kube_cluster):
    return Kube(kube_cluster.api_client())

import pytest

from tests.unit.packaging.helm import find_helm


@pytest.fixture(scope="session")
def helm() -> str:
    found = find_helm()
    if found is None:
        pytest.skip(
            "helm is not available: build the pinned one with `e2e/localcluster.sh bin` "
            "(the e2e tier builds it on a fresh machine), or set KUBETUNE_HELM"
        )
    return found

import importlib.util

# The S3 store's build hook (tests/s3_server.py builds SeaweedFS before the tests that use it).
pytest_plugins = ["tests.s3_server"]
# The live-cluster fixtures are only loaded where the cluster infrastructure exists.
if importlib.util.find_spec("tests.kube_cluster") is not None:
    pytest_plugins.append("tests.kube_cluster")
